"""The quantize stage: dynamic, static PTQ (calibrated), QAT; per-layer sensitivity.

What an int8 model is (the quantizable network, fusion, qconfigs, the file format, the float
twins) lives in edgekit/qmodel.py; this module makes one from a float checkpoint. Why eager
`torch.ao.quantization` and non-fused FakeQuantize: see qmodel.py.

For ONNX, BN is folded into the convs before the QDQ export (eval-mode fusion), so ONNX
Runtime can fuse DQ->Conv->Q into QLinearConv (a QDQ graph with Conv and BN apart ran 5x
slower than ORT's own quantize_static here).

Activation calibration methods (weights are always per-channel symmetric int8, min/max):
minmax (observed range), percentile (clip at the p-th percentile), entropy (the clipping
range minimizing KL divergence between the float histogram and its quantized version, as in
TensorRT), mse (the clipping range minimizing the histogram's quantization error). `auto`
tries all four and keeps the best on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed, qrelu6
from .artifacts import (Manifest, check_writable_dir, guard_output, parent_ref, publish, remove_path, sha256_file,
                        staging_path, to_plain)
from .calibrate import CalibrationSet, load_calibration, read_definition
from .config import (CalibMethod, CalibrationConfig, DataConfig, ExportOptions, QuantBackend, QuantizeConfig,
                     FinetuneConfig, QuantMode, WeightScheme, check_choice)
from .data import DataSplits, load_data_for_checkpoint
from .errors import ConfigError
from .formats import QDQ_FORMAT, QDQ_SUFFIX, SOURCE_FORMAT
from .model import Classifier, count_macs, load_checkpoint
from .measure import accuracy, compare_latency
from .observers import RangeSearchObserver
from .qengine import (_aoq, activation_observer_args, describe_engine, engine_latency_note, engine_of,
                      minmax_activation_observer, per_channel_weights, qat_qconfig, set_backend)
from .qengine import static_qconfig as _qconfig_with
from .qmodel import (Island, QuantModel, _mark_islands, convert, dynamic_quantize, int8_census, layer_names,
                     prepare_qat, prepare_static, quantizable, save_quantized)
from .report import Reporter, quiet
from .scratch import kept_or_trained, open_scratch, scratch_dir

METHODS = (CalibMethod.minmax, CalibMethod.percentile, CalibMethod.entropy, CalibMethod.mse)
# Settings that do not change the weights QAT trains (the side export, timing, logging), so a run
# resumed with another value goes on from the interrupted one's epochs.
NOT_TRAINING = frozenset({"export_onnx", "opset", "latency_runs", "threads", "tensorboard"})


def activation_observer(method: CalibMethod, config: QuantizeConfig):
    """`method`'s observer with the engine's own activation dtype and range (x86 0..127, qnnpack 0..255)."""
    if method is CalibMethod.minmax:
        return minmax_activation_observer(backend_of(config))
    return RangeSearchObserver.with_args(method=method.value, percentile=config.percentile,
                                         **activation_observer_args(backend_of(config)))

def static_qconfig(method: CalibMethod, config: QuantizeConfig):
    return _qconfig_with(activation_observer(method, config), backend_of(config), per_channel_of(config))


def backend_of(config: QuantizeConfig) -> str:
    """The config's engine by name, refused with the choices if unknown or missing from this torch."""
    check_choice("backend", config.backend, QuantBackend)
    return engine_of(config.backend).value


def per_channel_of(config: QuantizeConfig) -> bool:
    """Whether the config's int8 weights get one scale per output channel (--weights; default: the engine's choice)."""
    check_choice("weights", config.weights, WeightScheme)
    return per_channel_weights(backend_of(config), config.weights)


# ---- building int8 models ---------------------------------------------------------------------


@torch.no_grad()
def calibrate(prepared: nn.Module, cal: CalibrationSet, batch_size: int = 128) -> None:
    prepared.eval()
    for x in cal.batches(batch_size):
        prepared(x)

def static_quantize(model: Classifier, cal: CalibrationSet, method: CalibMethod, config: QuantizeConfig,
                    keep_float: list[str] = (), only_int8: list[str] | None = None) -> nn.Module:
    set_backend(backend_of(config))
    prepared = prepare_static(model, static_qconfig(method, config), keep_float, only_int8, backend_of(config))
    calibrate(prepared, cal)
    return convert(prepared)

# ---- QAT --------------------------------------------------------------------------------------


def prepare_qat_from_ptq(model: Classifier, ptq_prepared: QuantModel | None, keep_float: list[str] = (),
                         backend: str = QuantBackend.x86.value, per_channel: bool | None = None) -> QuantModel:
    """Fake-quant model for QAT whose activation ranges start at the calibrated PTQ ranges
    (per_channel: the weight scheme, None for the engine's)."""
    aoq = _aoq()
    wrapped = quantizable(model, qat=True, backend=backend)
    wrapped.qconfig = qat_qconfig(backend, per_channel)
    _mark_islands(wrapped, list(keep_float), None)
    prepare_qat(wrapped)
    if ptq_prepared is not None:
        observers = {name: m for name, m in ptq_prepared.named_modules() if isinstance(m, aoq.ObserverBase)}
        for name, fq in wrapped.named_modules():
            if isinstance(fq, aoq.FakeQuantize) and name in observers and not name.endswith("weight_fake_quant"):
                source = observers[name]
                scale, zero = source.calculate_qparams()
                fq.scale.resize_(scale.shape).copy_(scale)
                fq.zero_point.resize_(zero.shape).copy_(zero)
                lo = (fq.quant_min - zero.float()) * scale
                hi = (fq.quant_max - zero.float()) * scale
                fq.activation_post_process.min_val.resize_(lo.shape).copy_(lo)
                fq.activation_post_process.max_val.resize_(hi.shape).copy_(hi)
    return wrapped


def fold_float_islands(model: nn.Module) -> None:
    """QAT-fused conv+BN layers kept float still hold a separate BN; fold it as eval fusion would."""
    import torch.ao.nn.intrinsic as nni
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for island in [m for m in model.modules() if isinstance(m, Island)]:
        inner = island.inner.eval()
        folded_relu6 = qrelu6.fold_bn(inner)
        if folded_relu6 is not None:
            island.inner = folded_relu6
        elif isinstance(inner, nni.ConvBnReLU2d):
            island.inner = nni.ConvReLU2d(fuse_conv_bn_eval(inner[0], inner[1]), inner[2])
        elif isinstance(inner, nni.ConvBn2d):
            island.inner = fuse_conv_bn_eval(inner[0], inner[1])


def freeze_qat(model: nn.Module) -> None:
    aoq = _aoq()
    model.apply(aoq.disable_observer)
    for module in model.modules():
        # torch's freeze_bn_stats helper checks exact types; edgekit's Conv+BN+ReLU6 is a ConvBn2d too
        if isinstance(module, torch.ao.nn.intrinsic.qat.ConvBn2d):
            module.freeze_bn_stats()


# ---- save / load ------------------------------------------------------------------------------


@dataclass
class QuantizeResult:
    artifact: Path
    model: nn.Module
    metrics: dict[str, Any]
    onnx: Path | None = None
    sensitivity: list[dict[str, Any]] = field(default_factory=list)


# ---- the stage --------------------------------------------------------------------------------


@dataclass
class Int8Build:
    """What one build step made: its model and its share of the recipe, metrics and note (each
    dict in the order the manifest lists it)."""
    model: nn.Module
    recipe: dict[str, Any]
    note: str
    metrics: dict[str, float] = field(default_factory=dict)
    prepared: nn.Module | None = None  # static PTQ's calibrated model, where QAT starts from


def _accuracies(model: nn.Module, data: DataSplits) -> dict[str, float]:
    return {"val_accuracy": accuracy(model, data), "test_accuracy": accuracy(model, data, "test")}


def sensitivity_analysis(model: Classifier, cal: CalibrationSet, data: DataSplits, method: CalibMethod,
                         config: QuantizeConfig, reporter: Reporter = quiet) -> list[dict[str, Any]]:
    """Validation accuracy with only one layer int8 (the rest float), per layer, most sensitive first."""
    base = accuracy(model, data)
    rows = []
    names = layer_names(quantizable(model))
    with reporter.progress("sensitivity", total=len(names)) as bar:
        for name in names:
            q = static_quantize(model, cal, method, config, only_int8=[name])
            acc = accuracy(q, data)
            rows.append({"layer": name, "val_accuracy": acc, "drop": base - acc})
            bar.advance(1)
    rows.sort(key=lambda r: r["drop"], reverse=True)
    return rows


def _ranked_sensitivity(model: Classifier, cal: CalibrationSet, data: DataSplits, config: QuantizeConfig,
                        method: CalibMethod, reporter: Reporter) -> list[dict[str, Any]]:
    """The per-layer sensitivity ranking, shown as a table, where --sensitivity or --keep-float asks for it."""
    if not (config.sensitivity or config.keep_float):
        return []
    rows = sensitivity_analysis(model, cal, data, CalibMethod.minmax if method is CalibMethod.auto else method,
                                config, reporter)
    reporter.table("per-layer sensitivity (only this layer int8)", ["layer", "val accuracy", "drop (pt)"],
                   [[r["layer"], f"{r['val_accuracy']:.2%}", round(100 * r["drop"], 2)] for r in rows])
    return rows


def _export_side_qdq(artifact: Path, config: QuantizeConfig, data: DataSplits, reporter: Reporter,
                     force: bool = False) -> Path | None:
    """The QDQ ONNX beside an int8 artifact, written by `edgekit export` like every other file:
    the same parity gate against the int8 model, the same counted precision label. A file that
    fails the gate (or a machine without ONNX Runtime) leaves the int8 artifact as it is, said so."""
    from .errors import DependencyError, ParityError
    from .export import export_artifact

    options = ExportOptions(opset=config.opset, calibration=config.calibration, seed=config.seed)
    try:
        return export_artifact(artifact, QDQ_FORMAT.name, "int8", artifact.with_suffix(QDQ_SUFFIX), options,
                               reporter, data=data, force=force).path
    except (DependencyError, ParityError) as exc:
        reporter.info(f"quantize: QDQ ONNX not written: {exc.message}")
        return None


def _dynamic_int8(model: Classifier) -> Int8Build:
    """Dynamic int8: torch's dynamic kernels cover only the final Linear."""
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    note = ("dynamic int8: torch has dynamic kernels only for Linear/RNN layers, so only the final Linear (fc) is "
            f"int8; all {convs} convolutions stay fp32 (expect no speed-up and almost no size change)")
    return Int8Build(dynamic_quantize(model), {"quantized_layers": ["fc"],
                                               "activation": "dynamic per-batch (fc input only)",
                                               "weight": "qint8 per-tensor (fc)"}, note)


def _fusions(model: Classifier) -> list[str]:
    """The kinds of fused int8 op the network makes, in order of first appearance (the recipe's "fused")."""
    kinds = [" + ".join(type(model.get_submodule(name)).__name__ for name in group) for group in model.fusion_groups()]
    kinds += ["residual add + ReLU (FloatFunctional.add_relu)" if relu else "residual add (FloatFunctional.add)"
              for _, relu in model.residual_adds()]
    return list(dict.fromkeys(kinds))


def _weight_grid(engine: dict[str, Any]) -> str:
    weight = engine["weight"]
    return f"{weight['dtype']} {weight['qscheme'].replace('_', '-')} [{weight['quant_min']}, {weight['quant_max']}]"


def _static_int8(model: Classifier, cal: CalibrationSet, data: DataSplits, config: QuantizeConfig, method: CalibMethod,
                 backend: str, engine: dict[str, Any], keep_float: list[str], reporter: Reporter) -> Int8Build:
    """Static PTQ, `keep_float` layers left float: each candidate method calibrated and the best on
    validation kept, with its PTQ accuracies and its prepared model (for QAT to start from)."""
    candidates = list(METHODS) if method is CalibMethod.auto else [method]
    tried = []
    best = None
    for candidate in candidates:
        prepared = prepare_static(model, static_qconfig(candidate, config), keep_float, backend=backend)
        calibrate(prepared, cal)
        qmodel_c = convert(prepared)
        val = accuracy(qmodel_c, data)
        tried.append({"method": candidate.value, "val_accuracy": val})
        reporter.info(f"quantize: static {candidate.value}: val {val:.2%}")
        if best is None or val > best[0]:
            best = (val, candidate, prepared, qmodel_c)
    val, chosen, ptq_prepared, qmodel = best
    act = engine["activation"]
    recipe = {"method": chosen.value, "methods_tried": tried, "engine": engine,
              "weights": "per-channel" if engine["weight"]["per_channel"] else "per-tensor",
              "weight": f"{_weight_grid(engine)}, min/max",
              "activation": f"{act['dtype']} per-tensor affine, "
                            f"{'reduce_range ' if act['reduce_range'] else ''}"
                            f"({act['quant_min']}..{act['quant_max']}, {act['bits']}-bit), {chosen.value}",
              "fused": ", ".join(_fusions(model)),
              "float_layers": ["normalize (x*scale+shift on the input)"] + keep_float}
    note = (f"static PTQ ({backend}): {'per-channel' if engine['weight']['per_channel'] else 'per-tensor'} "
            f"int8 weights, {act['bits']}-bit activations calibrated on the calibration set")
    metrics = {"ptq_val_accuracy": val, "ptq_test_accuracy": accuracy(qmodel, data, "test")}
    return Int8Build(qmodel, recipe, note, metrics, prepared=ptq_prepared)


def _qat_int8(model: Classifier, ptq_prepared: nn.Module, data: DataSplits, config: QuantizeConfig, backend: str,
              engine: dict[str, Any], keep_float: list[str], reporter: Reporter, convert_it: bool = True,
              scratch: Path | None = None) -> Int8Build:
    """QAT from the PTQ ranges, observers and BN frozen for the last epochs, then converted, with
    the fake-quant accuracies and the QAT recipe. Without `convert_it` (a torchrun rank other
    than 0) only the fine-tuned fake-quant model, nothing measured. With `scratch`
    (edgekit.scratch.open_scratch) every epoch and cycle is kept there and a rerun goes on from them."""
    from .train import train_model

    qat = prepare_qat_from_ptq(model, ptq_prepared, keep_float, backend, per_channel_of(config))
    plan = FinetuneConfig.of_qat(config)
    for index, epochs in enumerate(plan.cycles):
        def train(state: Path | None, resume: bool, epochs: int = epochs) -> dict[str, Any]:
            train_model(qat, data, plan.train_config(epochs), reporter=reporter, state_path=state, resume=resume)
            return {}

        kept_or_trained(scratch, index, len(plan.cycles), qat, train, reporter, label="quantize: QAT")
        if index == 0:
            # Observers and BN statistics frozen from here: the last epochs fit the weights to fixed
            # ranges and fixed BN folding, which is what the converted model will have.
            freeze_qat(qat)
    if not convert_it:
        return Int8Build(qat, {}, "")
    qat.eval()
    fake = _accuracies(qat, data)
    qmodel = convert(qat)
    fold_float_islands(qmodel)
    act = engine["activation"]
    recipe = {"qat_epochs": config.qat_epochs, "qat_lr": config.qat_lr, "qat_freeze_epoch": plan.cycles[0],
              "qat_fake_quant": f"non-fused FakeQuantize, weights {_weight_grid(engine)}, "
                                f"activations {act['dtype']} {act['quant_min']}..{act['quant_max']}, "
                                "started from the PTQ ranges"}
    metrics = {"qat_fake_quant_val_accuracy": fake["val_accuracy"],
               "qat_fake_quant_test_accuracy": fake["test_accuracy"]}
    return Int8Build(qmodel, recipe, "QAT: fake-quant accuracy and converted int8 accuracy side by side in metrics",
                     metrics)


def _int8_measurements(model: Classifier, qmodel: nn.Module, fp32: dict[str, float], data: DataSplits,
                       config: QuantizeConfig, backend: str) -> dict[str, Any]:
    """The int8 model's accuracies and their drop from fp32, its latency beside fp32's, its int8
    tensors counted, and the MACs."""
    int8 = _accuracies(qmodel, data)
    # fp32 and int8 timed in alternating rounds: drift on a shared CPU lands on both alike.
    latency = compare_latency({"fp32": model, "int8": qmodel}, config.threads, config.latency_runs)
    latency_note = engine_latency_note(backend)  # qnnpack timed on x86 is not ARM's latency
    return {**int8,
            "accuracy_drop_val_pt": 100 * (fp32["val_accuracy"] - int8["val_accuracy"]),
            "accuracy_drop_test_pt": 100 * (fp32["test_accuracy"] - int8["test_accuracy"]),
            "fp32_latency_ms": latency["fp32"]["p50_ms"], "latency": latency["int8"],
            "latency_ms": latency["int8"]["p50_ms"],
            **({"latency_note": latency_note} if latency_note else {}),
            "census": int8_census(qmodel), "macs": count_macs(model)}


def _write_int8(out: Path, source: Path, qmodel: nn.Module, model: Classifier, classes: list[str],
                config: QuantizeConfig, metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The int8 file and its manifest, staged beside `out` and published together (or neither).
    Returns the metrics as the manifest has them: `metrics` and the two file sizes."""
    staged = staging_path(out)
    remove_path(staged)
    try:
        save_quantized(staged, qmodel, model.spec, classes, extra["recipe"], extra)
        written = {**metrics, "file_bytes": staged.stat().st_size, "parent_file_bytes": source.stat().st_size}
        precision = "int8" if written["census"]["qint8_tensors"] > 1 else "fp32 + int8 fc"
        publish(staged, out, Manifest(kind="quantized", format=SOURCE_FORMAT.name, precision=precision,
                                      parent=parent_ref(source), config={"quantize": config}, seed=config.seed,
                                      metrics=written,
                                      extra={"recipe": extra["recipe"], "note": extra["note"],
                                             "calibration": extra.get("calibration"),
                                             "sensitivity": extra["sensitivity"]}))
    finally:
        remove_path(staged)
    return written


def _summary_rows(mode: QuantMode, backend: str, recipe: dict[str, Any], metrics: dict[str, Any],
                  threads: int) -> list[list[Any]]:
    latency_note = metrics.get("latency_note")
    rows = [["mode", mode.value], ["engine", backend], ["method", recipe.get("method", "-")],
            ["fp32 val / test", f"{metrics['fp32_val_accuracy']:.2%} / {metrics['fp32_test_accuracy']:.2%}"]]
    if "ptq_val_accuracy" in metrics:
        rows.append(["PTQ int8 val / test", f"{metrics['ptq_val_accuracy']:.2%} / {metrics['ptq_test_accuracy']:.2%}"])
    if "qat_fake_quant_val_accuracy" in metrics:
        rows.append(["QAT fake-quant val / test", f"{metrics['qat_fake_quant_val_accuracy']:.2%} / "
                                                  f"{metrics['qat_fake_quant_test_accuracy']:.2%}"])
    rows += [["int8 val / test", f"{metrics['val_accuracy']:.2%} / {metrics['test_accuracy']:.2%}"],
             ["qint8 tensors", metrics["census"]["qint8_tensors"]],
             ["file (bytes)", f"{metrics['parent_file_bytes']:,} -> {metrics['file_bytes']:,}"],
             [f"CPU latency p50 batch 1, {threads} thread(s) (ms)" + (f" [{latency_note}]" if latency_note else ""),
              f"{metrics['fp32_latency_ms']:.3f} -> {metrics['latency_ms']:.3f}"]]
    return rows


def quantize_checkpoint(source: Path, config: QuantizeConfig, out: Path, reporter: Reporter = quiet,
                        data_config: DataConfig | None = None, data: DataSplits | None = None,
                        force: bool = False) -> QuantizeResult:
    """Quantize an edgekit checkpoint (fp32 or pruned) to int8; write the artifact + manifest.

    An existing `out` is replaced only when it is an earlier edgekit int8 artifact (or with
    `force`); never the source. The file and its manifest appear together or not at all."""
    source, out = Path(source), Path(out)
    config.validate()
    mode = QuantMode(config.mode)
    method = CalibMethod(config.method)
    if config.tensorboard is not None:
        check_writable_dir(config.tensorboard, create=False)
    if config.calibration:  # a wrong --calibration file is refused before the data is decoded
        read_definition(config.calibration)
    # Under torchrun only the QAT fine-tune is shared (data-parallel, train_model); rank 0 alone
    # measures and writes, and the other ranks return after the fine-tune (at once without one).
    world = distributed.setup_for_default_device()
    if world.is_main:  # refused before the data and the minutes of work; the write probe is a write
        guard_output(out, "quantized", sources=(source,), force=force)
        if mode is not QuantMode.dynamic and config.export_onnx:
            guard_output(out.with_suffix(QDQ_SUFFIX), "export", sources=(source,), force=force)
    if config.keep_float < 0:
        raise ConfigError(f"--keep-float must be >= 0, got {config.keep_float}", "e.g. --keep-float 2")
    if mode is not QuantMode.dynamic and not config.calibration:
        raise ConfigError(f"--mode {mode.value} needs a calibration set",
                          f"pass --calibration calibration/<data>-{CalibrationConfig.size}.json (make one with "
                          "`edgekit calibrate`)")
    if mode is QuantMode.dynamic and (config.keep_float or config.sensitivity):
        raise ConfigError("--sensitivity/--keep-float apply to static and qat modes", "drop them or use --mode static")
    if mode is QuantMode.dynamic and WeightScheme(config.weights) is not WeightScheme.engine:
        raise ConfigError("--weights applies to static and qat modes (dynamic int8 quantizes fc per tensor)",
                          "drop --weights or use --mode static")
    backend = backend_of(config)
    checkpoint = load_checkpoint(source)
    model = checkpoint.build()
    with distributed.main_first():  # rank 0 may write the decoded-image cache
        data = data if data is not None else load_data_for_checkpoint(checkpoint, data_config, reporter)
    if not world.is_main and mode is not QuantMode.qat:
        return QuantizeResult(artifact=out, model=model, metrics={})
    set_backend(backend)
    torch.manual_seed(config.seed)
    fp32 = _accuracies(model, data)
    fp32_metrics = {"fp32_" + k: v for k, v in fp32.items()}
    engine = describe_engine(backend, per_channel_of(config))
    calibration: dict[str, Any] | None = None
    sensitivity: list[dict[str, Any]] = []
    keep_float: list[str] = []

    if mode is QuantMode.dynamic:
        build = _dynamic_int8(model)
    else:
        cal = load_calibration(config.calibration, data, model.spec)
        calibration = cal.manifest_ref()
        sensitivity = _ranked_sensitivity(model, cal, data, config, method, reporter)
        keep_float = [row["layer"] for row in sensitivity[: config.keep_float]]
        build = _static_int8(model, cal, data, config, method, backend, engine, keep_float, reporter)
        if mode is QuantMode.qat:
            job = {"job": "qat", "source_sha256": sha256_file(source), "data": data.describe(),
                   "calibration": calibration, "keep_float": keep_float,
                   "config": {k: v for k, v in to_plain(config).items() if k not in NOT_TRAINING}}
            scratch = open_scratch(scratch_dir(out), job, reporter)
            qat = _qat_int8(model, build.prepared, data, config, backend, engine, keep_float, reporter,
                            convert_it=world.is_main, scratch=scratch)
            if not world.is_main:
                return QuantizeResult(artifact=out, model=qat.model, metrics={**fp32_metrics, **build.metrics})
            build = Int8Build(qat.model, {**build.recipe, **qat.recipe}, qat.note, {**build.metrics, **qat.metrics})

    recipe = {"mode": mode.value, "backend": backend, "keep_float": keep_float, **build.recipe}
    metrics = {**fp32_metrics, **build.metrics, **_int8_measurements(model, build.model, fp32, data, config, backend)}
    extra = {"parent": parent_ref(source), "data_config": checkpoint.extra.get("data_config"),
             "data": data.describe(), **({"calibration": calibration} if calibration is not None else {}),
             "recipe": recipe, "note": build.note, "sensitivity": sensitivity}
    metrics = _write_int8(out, source, build.model, model, data.classes, config, metrics, extra)
    if mode is QuantMode.qat:
        remove_path(scratch_dir(out))  # written: nothing left to resume
    # The QDQ ONNX reads the published int8 file, so it comes after it.
    onnx_path = None
    if mode is not QuantMode.dynamic and config.export_onnx:
        onnx_path = _export_side_qdq(out, config, data, reporter, force)
    reporter.table(f"quantize: {out.name}", ["", "value"],
                   _summary_rows(mode, backend, recipe, metrics, config.threads))
    reporter.info(f"quantize: {build.note}")
    return QuantizeResult(artifact=out, model=build.model, metrics=metrics, onnx=onnx_path, sensitivity=sensitivity)
