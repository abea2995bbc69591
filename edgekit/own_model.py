"""Your own model: int8 and ONNX for any torch image classifier, gated on parity, benchmarked.

`optimize_module(module, example, images, out)` takes an `nn.Module` whose forward maps float
[N, C, H, W] to [N, classes] logits (any C, H, W), and runs what works for any graph:

- ONNX fp32 and fp16, traced from the module itself (`formats.onnx.export_module`, `to_fp16`),
  with a batch axis of any size;
- static int8 as ONNX Runtime's QDQ quantizer over your images (`formats.onnx.quantize_qdq`:
  per-channel int8 weights on 7 bits, uint8 activations). This is the generic static int8
  route: it needs no knowledge of the layers, only the graph. edgekit's own static int8
  (torch PTQ/QAT with range search, `edgekit quantize`) rebuilds edgekit's own networks block by
  block and does not apply here;
- torch dynamic int8 (`qmodel.dynamic_quantize`): only nn.Linear has dynamic kernels, so every
  convolution stays fp32; the counted precision says so (a CNN is mostly "fp32").

Each result passes the parity gate (`validate.parity`/`check`, the format table's tolerances)
against your module on your images, or the run raises ParityError and writes nothing: files
are staged, gated and benchmarked first, and published with their manifests only when all pass.
Agreement, logit error and cosine need no labels; with `labels` the accuracy drop is gated too.
The first `calibration_images` of your images calibrate int8 and the gate runs on the rest, so
int8 is judged on images it was not calibrated on; pass no more than that many and the gate
runs on all of them, calibration images included (the report says which: `gate_held_out`). Each ONNX file's manifest names its parent as the sha256 of the module's
state_dict (there is no parent file). The files carry no deploy record (formats/metadata.py):
edgekit does not know your classes or preprocessing.

What needs a known architecture (edgekit's architectures: ResNet18, MobileNetV2, built from a
ModelSpec) is refused in one line before any work: TFLite and SavedModel (a Keras twin of the
network), TensorRT (its engines are built from an edgekit checkpoint or int8 file), and pruning
(the pruned network is rebuilt from a ModelSpec's channel counts). Export ONNX here and convert
that file with the runtime's own tools instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .artifacts import (Manifest, atomic_write_text, guard_output, publish, remove_path, size_bytes, staging_path,
                        to_plain, write_manifest)
from .config import ONNX_OPSET, check_range
from .errors import CalibrationError, DependencyError, ParityError, UnsupportedError, install_hint
from .formats import MODULE_FORMAT, SOURCE_FORMAT, export_format
from .measure import torch_threads
from .report import Reporter, quiet
from .timing import percentiles, time_interleaved
from .validate import ParityReport, check, parity, precision_label

KNOWN_ARCHITECTURE = "edgekit's architectures: ResNet18, MobileNetV2, built from a ModelSpec"
CONVERT_INSTEAD = (f"export {MODULE_FORMAT.name} with this API and convert that file with the runtime's own tools "
                   "(e.g. onnx2tf for TFLite, trtexec for TensorRT)")
PARITY_BATCH = 64  # images per call in the gate: the files have a batch axis of any size


@dataclass
class OwnModelConfig:
    """What `optimize_module` writes and how it gates and times it."""

    name: str = "model"  # file stem: <name>.<precision><suffix> in `out`
    targets: tuple[str, ...] = (MODULE_FORMAT.name,)  # another target is refused (needs a known architecture)
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")  # the files written
    dynamic_int8: bool = True  # also torch dynamic int8 of the nn.Linear layers (kept in memory)
    prune: bool = False  # True is refused: pruning needs a known architecture
    opset: int = ONNX_OPSET
    calibration_images: int = 256  # the first this many images calibrate static int8; the gate runs on the rest
    bench_batch: int = 16  # timed beside batch 1
    bench_runs: int = 30  # timed calls per file and batch
    bench_warmup: int = 3
    threads: int = 1  # torch and ONNX Runtime intra-op threads, for the gate and the bench
    force: bool = False  # replace outputs that are not earlier edgekit exports

    def validate(self) -> "OwnModelConfig":
        check_range("opset", self.opset, ONNX_OPSET)
        check_range("calibration_images", self.calibration_images, 1)
        check_range("bench_batch", self.bench_batch, 1)
        check_range("bench_runs", self.bench_runs, 1)
        check_range("bench_warmup", self.bench_warmup, 0)
        check_range("threads", self.threads, 1)
        return self


@dataclass(frozen=True)
class BenchRow:
    """One result at one batch size: latency of its runner and the size of the file or module."""

    label: str  # "torch fp32" (your module), "torch int8" (dynamic), "onnx fp32", ...
    runtime: str  # the runner's name
    precision: str  # counted from the weights, not requested
    batch: int
    threads: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    images_per_second: float  # batch / mean
    size_bytes: int  # the file, or a module's serialized state_dict
    path: str | None  # None: a module in memory


@dataclass
class Produced:
    """One result: its gate report, what its weights hold, where it is."""

    label: str
    precision: str  # counted
    parity: ParityReport
    census: dict[str, Any]
    size_bytes: int
    path: Path | None = None  # where it is published; None: the dynamic int8 module (OwnModelResult.dynamic_int8)
    manifest: Manifest | None = None


@dataclass
class OwnModelResult:
    produced: list[Produced]
    bench: list[BenchRow]
    source_sha256: str  # of the module's state_dict: the parent every manifest names
    report_path: Path
    dynamic_int8: nn.Module | None = None
    dynamic_int8_layers: list[str] = field(default_factory=list)  # the nn.Linear layers it quantized
    float_layers: list[str] = field(default_factory=list)  # weighted layers dynamic int8 left fp32

    def get(self, label: str) -> Produced:
        return next(p for p in self.produced if p.label == label)


# ---- refusals and checks, before any work -----------------------------------------------------


def needs_known_architecture(what: str) -> UnsupportedError:
    """The one refusal of a stage that only edgekit's own architectures support."""
    return UnsupportedError(f"{what} needs a known architecture ({KNOWN_ARCHITECTURE}); "
                            "a module of your own is not supported there", CONVERT_INSTEAD)


def check_request(config: OwnModelConfig) -> None:
    """Refuse what this API cannot do for an unknown module, each in one line."""
    config.validate()
    if config.prune:
        raise UnsupportedError(f"pruning needs a known architecture ({KNOWN_ARCHITECTURE}): the pruned network "
                               "is rebuilt from its ModelSpec's channel counts", "prune your module with "
                               "torch-pruning yourself, then pass the pruned module here")
    for target in config.targets:
        fmt = export_format(target)
        if fmt is not MODULE_FORMAT:
            raise needs_known_architecture(f"{target} export")
    for precision in config.precisions:
        export_format(MODULE_FORMAT.name, precision)
    reason = MODULE_FORMAT.unavailable_reason()
    if reason:
        raise DependencyError(f"cannot export {MODULE_FORMAT.name} here: {reason}", install_hint(MODULE_FORMAT.extra))


def check_inputs(module: nn.Module, example: torch.Tensor, images: np.ndarray,
                 labels: np.ndarray | None) -> tuple[np.ndarray, int]:
    """The example is [N, C, H, W], the module maps it to [N, classes], the images match its
    (C, H, W); returns the images as float32 and the number of classes."""
    devices = {t.device.type for t in [*module.parameters(), *module.buffers()]}
    if devices - {"cpu"}:
        raise UnsupportedError(f"the module is on {', '.join(sorted(devices - {'cpu'}))}; export and the bench run on "
                               "the CPU", "pass module.cpu() and a CPU example")
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        shape = tuple(example.shape) if hasattr(example, "shape") else type(example).__name__
        raise UnsupportedError(f"the example input has shape {shape}, not [N, C, H, W]",
                               "pass one batch of images as a 4-D float tensor")
    with torch.no_grad(), _eval(module):
        output = module(example.float())
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != example.shape[0]:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UnsupportedError(f"the module returns {got} for an example of {tuple(example.shape)}, not "
                               f"[{example.shape[0]}, classes] logits", "wrap it so forward returns one logit row per image")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != tuple(example.shape[1:]) or not len(images):
        raise CalibrationError(f"the images have shape {images.shape}, the example [N, {', '.join(map(str, example.shape[1:]))}]",
                               "pass images of the example's channels, height and width")
    if labels is not None and np.asarray(labels).shape != (len(images),):
        raise CalibrationError(f"{np.asarray(labels).shape} labels for {len(images)} images",
                               "pass one integer label per image, or none")
    return images, int(output.shape[1])


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on running stats, as exported) for the block; the user's mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the module's state_dict names, dtypes, shapes and bytes: the parent of its exports."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_size(module: nn.Module) -> int:
    """Bytes of the module's state_dict as torch.save writes it."""
    import io

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return len(buffer.getvalue())


# ---- the run ----------------------------------------------------------------------------------


def optimize_module(module: nn.Module, example: torch.Tensor, images: np.ndarray, out: str | Path,
                    config: OwnModelConfig | None = None, labels: np.ndarray | None = None,
                    reporter: Reporter = quiet) -> OwnModelResult:
    """ONNX fp32/fp16/static int8 and torch dynamic int8 of `module`, each gated on parity with it
    on `images`, then benchmarked side by side; the files and their manifests land in `out`.

    `example`: one float batch [N, C, H, W] the module takes; `images`: float32 [N, C, H, W] as
    the module takes them (they calibrate int8 and feed the gate); `labels`: optional, gates the
    accuracy drop. Raises UnsupportedError (a stage that needs a known architecture, a module
    that does not return [N, classes]), CalibrationError (images of another shape) or
    ParityError (a result that drifts; nothing is written then)."""
    from .formats.onnx import export_module, quantize_qdq, to_fp16
    from .formats.torch import TorchRunner

    config = config or OwnModelConfig()
    check_request(config)
    images, classes = check_inputs(module, example, images, labels)
    out = Path(out)
    outputs = {p: out / f"{config.name}.{p}{MODULE_FORMAT.suffix}" for p in config.precisions}
    report_path = out / f"{config.name}.own-model.json"
    for path in outputs.values():
        guard_output(path, "export", force=config.force)
    guard_output(report_path, "own-model-report", force=config.force)
    parent = {"module": f"{type(module).__module__}.{type(module).__qualname__}",
              "state_dict_sha256": state_dict_sha256(module)}
    shape = tuple(int(d) for d in example.shape[1:])
    calibration = images[:config.calibration_images]
    held_out = len(images) > len(calibration)  # else the gate reuses the calibration images, and says so
    gate_images = images[len(calibration):] if held_out else images
    gate_labels = None if labels is None else (np.asarray(labels)[len(calibration):] if held_out else labels)
    staged = {p: staging_path(path) for p, path in outputs.items()}
    fp32_stage = staging_path(out / f"{config.name}.trace{MODULE_FORMAT.suffix}")
    produced: list[Produced] = []
    runners: dict[str, Any] = {}
    result = OwnModelResult(produced=[], bench=[], source_sha256=parent["state_dict_sha256"], report_path=report_path)
    onnx = MODULE_FORMAT.module()
    try:
        with _eval(module), torch_threads(config.threads):
            source = TorchRunner(module, name=f"{SOURCE_FORMAT.name} fp32 (your module)")
            runners[f"{SOURCE_FORMAT.name} fp32"] = source
            reporter.info(f"{MODULE_FORMAT.name}: tracing {type(module).__name__} at [N, {', '.join(map(str, shape))}]")
            export_module(module, fp32_stage, config.opset, dynamic_batch=True, input_shape=shape)
            for precision, path in staged.items():
                if precision == "fp16":
                    to_fp16(fp32_stage, path)
                elif precision == "int8":
                    reporter.info(f"{MODULE_FORMAT.name}: QDQ int8 from {len(calibration)} calibration images")
                    quantize_qdq(fp32_stage, path, calibration, batch=None)
                else:
                    shutil.copyfile(fp32_stage, path)
                runner = onnx.load_runner(path, config.threads)
                label = f"{MODULE_FORMAT.name} {precision}"
                report = _gate(source, runner, gate_images, gate_labels, MODULE_FORMAT.name, precision)
                census = onnx.census(path)
                produced.append(Produced(label, precision_label(census), report, census, size_bytes(path),
                                         outputs[precision]))
                runners[label] = runner
                reporter.info(f"{label}: agreement {report.top1_agreement:.2%}, max |logit error| {report.max_abs:.3g}")
            if config.dynamic_int8:
                _dynamic_int8(module, source, gate_images, gate_labels, result, produced, runners, config, reporter)
            result.bench = bench(runners, produced, module, images, config)
        result.produced = produced
        _publish(result, outputs, staged, parent, config, shape, classes, len(calibration), held_out)
    finally:
        for path in [fp32_stage, *staged.values()]:
            remove_path(path)
    reporter.table(f"your module: {config.name}", ["result", "precision", "batch", "p50 ms", "size (bytes)"],
                   [(r.label, r.precision, r.batch, f"{r.p50_ms:.3f}", r.size_bytes) for r in result.bench])
    return result


def _gate(source, runner, images: np.ndarray, labels: np.ndarray | None, target: str, precision: str) -> ParityReport:
    report = parity(source, runner, images, labels, batch_size=PARITY_BATCH)
    try:
        return check(report, target, precision)
    except ParityError as exc:
        exc.hint = ("nothing was written; check the module exports as traced (no data-dependent control flow), "
                    "or keep that precision out of OwnModelConfig.precisions")
        raise


def _dynamic_int8(module: nn.Module, source, images: np.ndarray, labels: np.ndarray | None, result: OwnModelResult,
                  produced: list[Produced], runners: dict[str, Any], config: OwnModelConfig, reporter: Reporter) -> None:
    """torch dynamic int8 of the nn.Linear layers, gated and counted; the module stays in memory."""
    from .formats.torch import TorchRunner
    from .qmodel import dynamic_quantize, int8_census

    quantized = dynamic_quantize(module)
    touched = [name for name, m in quantized.named_modules()
               if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") and name]
    result.float_layers = [name for name, m in quantized.named_modules()
                           if name and name not in touched and isinstance(getattr(m, "weight", None), torch.Tensor)
                           and not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))]
    if not touched:
        reporter.info("dynamic int8: the module has no nn.Linear; torch dynamic int8 would change nothing (skipped)")
        return
    label = f"{SOURCE_FORMAT.name} int8"
    runner = TorchRunner(quantized, name=f"{SOURCE_FORMAT.name} dynamic int8")
    report = _gate(source, runner, images, labels, SOURCE_FORMAT.name, "int8")
    census = int8_census(quantized)
    counted = precision_label({"weights_by_dtype": census["elements_by_dtype"]})
    produced.append(Produced(label, counted, report, census, module_size(quantized)))
    runners[label] = runner
    result.dynamic_int8, result.dynamic_int8_layers = quantized, touched
    reporter.info(f"dynamic int8: {len(touched)} nn.Linear quantized, {len(result.float_layers)} weighted layers "
                  f"stay fp32 ({counted})")


def bench(runners: dict[str, Any], produced: list[Produced], module: nn.Module, images: np.ndarray,
          config: OwnModelConfig) -> list[BenchRow]:
    """Batch 1 and `bench_batch` latency of every runner, timed in alternating rounds (edgekit.timing)."""
    sizes = {p.label: (p.size_bytes, str(p.path) if p.path else None, p.precision) for p in produced}
    sizes.setdefault(f"{SOURCE_FORMAT.name} fp32", (module_size(module), None, "fp32"))
    rows = []
    for batch in sorted({1, config.bench_batch}):
        inputs = [np.ascontiguousarray(images[np.arange(k * batch, (k + 1) * batch) % len(images)]) for k in range(4)]
        calls = {label: (lambda i, r=runner: r.predict(inputs[i % len(inputs)])) for label, runner in runners.items()}
        samples = time_interleaved(calls, config.bench_runs, config.bench_warmup, rounds=min(5, config.bench_runs))
        for label, runner in runners.items():
            stats = percentiles(samples[label])
            size, path, precision = sizes[label]
            rows.append(BenchRow(label, runner.name, precision, batch, config.threads, stats["p50"], stats["p90"],
                                 stats["mean"], 1e3 * batch / stats["mean"], size, path))
    return rows


def _publish(result: OwnModelResult, outputs: dict[str, Path], staged: dict[str, Path], parent: dict[str, str],
             config: OwnModelConfig, shape: tuple[int, ...], classes: int, calibrated: int, held_out: bool) -> None:
    """Every gated file to its place with a manifest, then the run's report (rows and gates) beside them."""
    common = {"own_model": asdict(config), "input_shape": list(shape), "classes": classes,
              "dynamic_batch": True, "parity_batch": PARITY_BATCH, "gate_held_out": held_out}
    for precision, out in outputs.items():
        item = result.get(f"{MODULE_FORMAT.name} {precision}")
        item.manifest = publish(staged[precision], out, Manifest(
            kind="export", format=MODULE_FORMAT.name, precision=item.precision, parent=parent,
            config={**common, "target": MODULE_FORMAT.name, "requested_precision": precision,
                    "int8_route": "onnxruntime.quantization.quantize_static (QDQ)" if precision == "int8" else None,
                    "calibration_images": calibrated if precision == "int8" else 0},
            metrics={"parity": item.parity.as_metrics(), "census": item.census,
                     "bench": [asdict(r) for r in result.bench if r.label == item.label]}))
    report = {"source": parent, "config": common,
              "produced": [{"label": p.label, "precision": p.precision, "size_bytes": p.size_bytes,
                            "path": str(p.path) if p.path else None, "parity": p.parity.as_metrics()}
                           for p in result.produced],
              "dynamic_int8_layers": result.dynamic_int8_layers, "float_layers": result.float_layers,
              "bench": [asdict(r) for r in result.bench]}
    atomic_write_text(result.report_path, json.dumps(to_plain(report), indent=2) + "\n")
    write_manifest(result.report_path, Manifest(kind="own-model-report", format="json", precision="n/a",
                                                parent=parent, config=common))
