"""The format table: every target edgekit can write and run, listed once.

export, validate, bench, pipeline and the CLI read this table; nothing else names formats
(tests/test_format_names.py checks). Each entry owns, for its format: the module with its
exporter and runner, the runtimes that can run its files (an ONNX file: ONNX Runtime, and
OpenVINO when installed), its parity tolerances per precision, its stock baselines (what a user
would do without edgekit) and its availability check. Format modules are imported lazily
(TensorFlow, TensorRT and friends are heavy and optional) and offer:

    export(source: SourceFile | Path, out: Path, precision: str, options: ExportOptions, calibration, reporter) -> Path
        # source: the edgekit torch file, read once by the export stage (source.py); a path is read here
    load_runner(path: Path, threads: int | None = None) -> Runner
    census(path: Path) -> dict        # weights and ops counted by dtype, read from the file
    unavailable_reason() -> str | None  # why this machine cannot export/run it, or None
    write_metadata(path: Path, meta: DeployMetadata) -> DeployMetadata   # exportable formats: complete
        # the record from the file's own I/O and store it with the format's mechanism (metadata.py)
    read_metadata(path: Path) -> DeployMetadata | None   # read it back from the file alone
    make_baseline(baseline: StockBaseline, start: Path, out: Path, calibration) -> Path   # if it has baselines
    int8_slowdown_reasons(runtime: str, manifest_config: dict | None, census: dict | None) -> list[str]
        # optional: why an int8 file of it can run slower, from a bench row's runtime, manifest config and census
    manifest_extra(path: Path, source: SourceFile) -> dict   # optional: facts about an export for its manifest
    check_file(path: Path) -> None   # optional: a cheap read that names a damaged file in one line
        # (check_artifact below runs it for every file a user names, before any work)

The source format's load_runner also takes the SourceFile an export has read, so the parity
gate's reference runs from the same in-memory payload as the exporter.

A runtime module offers load_runner and unavailable_reason. A Runner takes float32 pixels in
[0, 1], NCHW [N, 3, 32, 32], and returns float32 logits [N, C], whatever the file holds inside;
layout and dtype conversion live in the runner.

`examples` names the standalone runner scripts (examples/, importing only their runtime, numpy and
Pillow) that run the format's files without edgekit; `edgekit export --bundle` copies them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import DependencyError, UnsupportedError, install_hint
from ..timing import predict_batched
from .source import SourceFile, as_source

if TYPE_CHECKING:
    from ..model import Checkpoint


class Runner(Protocol):
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Tolerance:
    """How close an exported file must stay to its source on the parity images (edgekit.validate)."""

    min_agreement: float  # top-1 agreement with the source, fraction
    max_abs: float | None = None  # largest logit difference allowed (None: not gated)
    min_cosine: float | None = None  # mean per-image cosine similarity of logits
    # int8: accuracy on the parity images may drop this much (points) below the source's
    max_drop_vs_int8_source: float | None = None  # source already quantized (PTQ/QAT): same arithmetic
    max_drop_vs_fp32_source: float | None = None  # source fp32: quantization error itself is allowed


TOLERANCE_FP32 = Tolerance(min_agreement=0.999, max_abs=1e-3, min_cosine=0.99999)
TOLERANCE_FP16 = Tolerance(min_agreement=0.995, max_abs=None, min_cosine=0.999)
# vs an fp32 source the gate is the accuracy: at most 2 points lower on the parity images
# (one image of 256 is 0.4 points), with logits still pointing the same way (mean cosine 0.99).
# Top-1 agreement is only loosely gated (85 %): PTQ flips low-margin images both ways, and a
# weak model has many (a 50 %-accurate tiny test model agrees ~90 %; a 95 % CIFAR model ~98 %).
# The cosine is what separates a file computed wrongly from a coarse one: sound int8 files
# measured 0.9933 (the test suite's tiny models) to 0.9999 (the references), while 8-bit weights
# saturating ONNX Runtime's kernels on an AVX2-only CPU gave 0.982-0.984 at a 0.8-1.5 point loss
# and 95 % agreement (benchmarks/results/onnx-weight-bits-cpu-avx2.md), which 0.98 let through.
# vs an int8/QAT source the export should reproduce the same integer model: 0.5 points.
TOLERANCE_INT8 = Tolerance(min_agreement=0.85, max_abs=None, min_cosine=0.99,
                           max_drop_vs_int8_source=0.5, max_drop_vs_fp32_source=2.0)
STANDARD_TOLERANCES = {"fp32": TOLERANCE_FP32, "fp16": TOLERANCE_FP16, "int8": TOLERANCE_INT8}


@dataclass(frozen=True)
class Runtime:
    """One engine that runs files of a format; `module_name` offers load_runner and unavailable_reason."""

    name: str  # rows are named after the engine, so they stay comparable across runs
    module_name: str

    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)

    def load(self, path: Path, threads: int | None = None) -> Runner:
        return self.module().load_runner(path, threads)

    def unavailable(self) -> str | None:
        return self.module().unavailable_reason()


@dataclass(frozen=True)
class StockBaseline:
    """A file made the way a user would without edgekit, by the format module's make_baseline."""

    label: str  # as shown in the bench table
    slug: str  # in the file name
    # True: starts from the fp32 export of the root in this format (found among the benched
    # artifacts); False: from the root checkpoint itself.
    from_fp32_export: bool
    variant: str = "default"  # which recipe make_baseline follows


@dataclass(frozen=True)
class Format:
    name: str
    module_name: str
    suffix: str
    precisions: tuple[str, ...]
    extra: str  # the pip extra that brings its runtime
    exportable: bool = True  # torch is a source format, not an export target
    runtimes: tuple[Runtime, ...] = ()  # empty: one runtime, the format module, named after the format
    tolerances: dict[str, Tolerance] = field(default_factory=dict, hash=False, compare=False)
    baselines: tuple[StockBaseline, ...] = ()
    examples: tuple[str, ...] = ()  # standalone runner scripts in examples/, one per runtime that has one
    int8_io: bool = False  # can hold int8 input/output tensors (--int8-io)
    folder: bool = False  # an export is a directory named *<suffix>, not a file

    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)

    def unavailable_reason(self) -> str | None:
        return self.module().unavailable_reason()

    def all_runtimes(self) -> tuple[Runtime, ...]:
        return self.runtimes or (Runtime(self.name, self.module_name),)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        # torch int8: a dynamic int8 module of a user's own (edgekit.own_model) against its fp32 self
        Format("torch", "edgekit.formats.torch", ".pt", ("fp32", "int8"), "", exportable=False,
               runtimes=(Runtime("torch-eager", "edgekit.formats.torch"),),
               tolerances={"int8": TOLERANCE_INT8}),
        Format("onnx", "edgekit.formats.onnx", ".onnx", ("fp32", "fp16", "int8"), "onnx",
               runtimes=(Runtime("onnxruntime", "edgekit.formats.onnx"), Runtime("openvino", "edgekit.formats.openvino")),
               tolerances=dict(STANDARD_TOLERANCES),
               # reduce_range (7-bit weights) as edgekit's own int8 files: without it a u8-activation file is
               # wrong on x86 CPUs without VNNI (edgekit.formats.onnx.INT16_MAX), and a baseline a CPU
               # computes wrongly measures that CPU, not the recipe
               baselines=(StockBaseline("stock ORT quantize_static (QDQ, s8 act., 7-bit weights)", "ort-qdq-s8-rr", True),
                          StockBaseline("stock ORT quantize_static (QDQ, u8 act., 7-bit weights)", "ort-qdq-u8-rr", True,
                                        "uint8")),
               examples=("run_onnxruntime.py", "run_openvino.py")),
        # TensorRT may run fp32 layers in TF32 on Ampere and newer, so its fp32 row gates on
        # agreement and cosine rather than a tight max-abs.
        Format("tensorrt", "edgekit.formats.tensorrt", ".engine", ("fp32", "fp16", "int8"), "tensorrt",
               tolerances={**STANDARD_TOLERANCES,
                           "fp32": Tolerance(min_agreement=0.999, max_abs=5e-2, min_cosine=0.9999)},
               examples=("run_tensorrt.py",)),
        Format("tflite", "edgekit.formats.tflite", ".tflite", ("fp32", "fp16", "int8"), "tflite",
               tolerances=dict(STANDARD_TOLERANCES),
               baselines=(StockBaseline("stock TFLite converter (full-integer defaults)", "tflite-default-int8",
                                        False),),
               examples=("run_tflite.py",), int8_io=True),
        Format("savedmodel", "edgekit.formats.savedmodel", ".savedmodel", ("fp32",), "tflite",
               tolerances={"fp32": TOLERANCE_FP32}, folder=True),
    )
}

# The format every other one is exported from, and whose runner is the parity gate's reference.
SOURCE_FORMAT = FORMATS["torch"]
# What `edgekit quantize` writes beside an int8 artifact for the exporters: a QDQ file of this format.
QDQ_FORMAT = FORMATS["onnx"]
QDQ_SUFFIX = ".qdq" + QDQ_FORMAT.suffix
# The one format a torch module of any architecture exports to (edgekit.own_model): its graph is
# traced from the module itself. The others rebuild edgekit's ResNet18 (a Keras twin, TensorRT's
# Q/DQ placement by layer name) and need its ModelSpec.
MODULE_FORMAT = FORMATS["onnx"]


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UnsupportedError(f"unknown format '{name}'", f"choose one of: {', '.join(FORMATS)}") from None


def format_of_path(path: str | Path) -> Format:
    """Which format a file is, from its suffix (a SavedModel is a directory named *.savedmodel)."""
    path = Path(path)
    for fmt in FORMATS.values():
        if path.name.endswith(fmt.suffix):
            return fmt
    raise UnsupportedError(f"cannot tell the format of {path}", f"known suffixes: {known_suffixes()}")


def known_suffixes() -> str:
    return ", ".join(f.suffix for f in FORMATS.values())


def predict_all(runner: Runner, images: np.ndarray, batch: int) -> tuple[np.ndarray, int]:
    """Logits for every image and the batch used: `batch` at a time, or one at a time for a file
    with a static batch of 1 (which refuses the first `batch`-sized call)."""
    try:
        runner.predict(images[:batch])
    except Exception:
        if batch == 1:
            raise
        return predict_all(runner, images, 1)
    return predict_batched(runner.predict, images, batch), batch


def check_artifact(artifact: Path) -> Format:
    """A file a user named, checked before any work: it exists, is a file (a folder for a folder
    format), and its format module's cheap read passes; each failure is one line naming the path."""
    from ..errors import CheckpointError

    artifact = Path(artifact)
    if not artifact.exists():
        raise CheckpointError(f"artifact not found: {artifact}", "check the path")
    fmt = format_of_path(artifact)
    if artifact.is_dir() != fmt.folder:
        kind = "folder" if artifact.is_dir() else "file"
        raise CheckpointError(f"{artifact} is a {kind}, not a {fmt.name} {'folder' if fmt.folder else 'file'}",
                              "pass the artifact itself")
    check = getattr(fmt.module(), "check_file", None)
    if check is not None:
        check(artifact)
    return fmt


def load_artifact_runner(artifact: Path, threads: int | None = None) -> Runner:
    """The runner of any file edgekit writes, by its suffix; refused in one line if this machine cannot run it."""
    fmt = check_artifact(artifact)
    reason = fmt.unavailable_reason()
    if reason is not None:
        raise DependencyError(f"cannot run {artifact.name} here: {reason}",
                              f"`edgekit doctor` lists what this machine runs; the runtime comes with "
                              f"{install_hint(fmt.extra)}")
    return fmt.module().load_runner(artifact, threads)


def export_targets() -> list[str]:
    return [name for name, fmt in FORMATS.items() if fmt.exportable]


def export_format(target: str, precision: str | None = None) -> Format:
    """The table entry of an export target, refusing a name that is none and a precision its files
    cannot hold: the one place these two refusals are worded."""
    fmt = FORMATS.get(target)
    if fmt is None or not fmt.exportable:
        raise UnsupportedError(f"unknown export target '{target}'", f"choose one of: {', '.join(export_targets())}")
    if precision is not None and precision not in fmt.precisions:
        raise UnsupportedError(f"{target} cannot hold precision '{precision}'",
                               f"{target} supports: {', '.join(fmt.precisions)}")
    return fmt


def load_source(source: Path | SourceFile, precision: str) -> Checkpoint:
    """The float checkpoint an exporter starts from (SourceFile.checkpoint): an edgekit checkpoint as
    it is; an int8 artifact only for an int8 export, as its dequantized twin."""
    return as_source(source).checkpoint(precision)
