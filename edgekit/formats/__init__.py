"""The format table: every target edgekit can write and run, listed once.

export, bench and the CLI read this table; nothing else names formats. Each format module
is imported lazily (TensorFlow, TensorRT and friends are heavy and optional) and offers:

    export(source: Path, out: Path, precision: str, options: ExportOptions, calibration, reporter) -> Path
    load_runner(path: Path, threads: int | None = None) -> Runner
    census(path: Path) -> dict        # weights and ops counted by dtype, read from the file
    unavailable_reason() -> str | None  # why this machine cannot export/run it, or None

A Runner takes float32 pixels in [0, 1], NCHW [N, 3, 32, 32], and returns float32 logits [N, C],
whatever the file holds inside; layout and dtype conversion live in the runner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from ..errors import UnsupportedError

if TYPE_CHECKING:
    from ..model import Checkpoint


class Runner(Protocol):
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Format:
    name: str
    module_name: str
    suffix: str
    precisions: tuple[str, ...]
    extra: str  # the pip extra that brings its runtime
    exportable: bool = True  # torch is a source format, not an export target

    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)

    def unavailable_reason(self) -> str | None:
        return self.module().unavailable_reason()


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("torch", "edgekit.formats.torch", ".pt", ("fp32", "int8"), "", exportable=False),
        Format("onnx", "edgekit.formats.onnx", ".onnx", ("fp32", "fp16", "int8"), "onnx"),
        Format("tensorrt", "edgekit.formats.tensorrt", ".engine", ("fp32", "fp16", "int8"), "tensorrt"),
        Format("tflite", "edgekit.formats.tflite", ".tflite", ("fp32", "fp16", "int8"), "tflite"),
        Format("savedmodel", "edgekit.formats.savedmodel", ".savedmodel", ("fp32",), "tflite"),
    )
}


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
    raise UnsupportedError(f"cannot tell the format of {path}",
                           f"known suffixes: {', '.join(f.suffix for f in FORMATS.values())}")


def predict_in_fixed_batches(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
                             size: int | None) -> np.ndarray:
    """Run `batch` through a file whose batch dimension is fixed at `size` (None = dynamic):
    in chunks of `size`, zero-padding the last one and dropping the padded rows' outputs."""
    if size is None or len(batch) == size:
        return run(batch)
    outputs = []
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        real = len(chunk)
        if real < size:
            chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(run(chunk)[:real])
    return np.concatenate(outputs)


def export_targets() -> list[str]:
    return [name for name, fmt in FORMATS.items() if fmt.exportable]


def load_source(source: Path, precision: str) -> Checkpoint:
    """The float checkpoint an exporter starts from.

    An edgekit checkpoint (fp32 or pruned) as it is. An int8 artifact (static PTQ or QAT) only
    for an int8 export, as its dequantized twin: writing it as fp32/fp16 would silently undo
    the quantization its accuracy was measured with.
    """
    from ..model import load_checkpoint
    from ..quantize import dequantized_checkpoint, is_quantized_artifact

    if not is_quantized_artifact(source):
        return load_checkpoint(source)
    if precision != "int8":
        raise UnsupportedError(f"{Path(source).name} is an int8 model; a {precision} export of it would be its "
                               "dequantized copy", "export its float parent (named in its manifest) for fp32/fp16")
    return dequantized_checkpoint(source)
