"""Commands that compress a trained model: calibrate, prune, control and quantize.

A fine-tune stopped by Ctrl-C (prune, control, QAT) says where its finished epochs are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import (CalibMethod, CalibrationConfig, DataConfig, DataSource, Importance, PruneConfig,
                      QuantBackend, QuantMode, QuantizeConfig, WeightScheme)
from .app import (DataDirOption, ForceOption, SourceOption, TensorboardOption, app, data_config_from_options,
                  make_reporter)


@app.command()
def calibrate(
    source: DataSource = SourceOption,
    data_dir: Optional[Path] = DataDirOption,
    size: int = typer.Option(CalibrationConfig.size, help="images (class-balanced); 128, 512 and 1024 are committed"),
    seed: int = typer.Option(DataConfig.seed, help="seed of the image selection"),
    val_size: int = typer.Option(DataConfig.val_size, help="the validation split the data is loaded with"),
    data_seed: int = typer.Option(0, help="seed of the train/val split"),
    checkpoint: Optional[Path] = typer.Option(None, help="record this model's mean/std (default CIFAR-10's)"),
    out: Optional[Path] = typer.Option(None, help="default: calibration/<data>-<size>.json"),
    force: bool = ForceOption,
) -> None:
    """Choose and hash a calibration set shared by every int8 target.

    Example: edgekit calibrate --source folder --data-dir data/cifar10-jpg --size 512
    """
    from ..calibrate import DEFAULT_DIR, default_name, make_calibration, save_calibration
    from ..data import load_data
    from ..model import load_checkpoint

    from ..artifacts import guard_output

    reporter = make_reporter()
    CalibrationConfig(size=size, seed=seed).validate()
    data_config = data_config_from_options(source, data_dir, val_size, None, data_seed).validate({"seed": "data_seed"})
    spec = load_checkpoint(checkpoint).spec if checkpoint else None  # a bad --checkpoint fails before the data loads
    target = out or DEFAULT_DIR / f"{default_name(data_config, size)}.json"
    sources = (checkpoint,) if checkpoint else ()
    guard_output(target, "calibration", sources=sources, force=force)  # before the data is decoded; saving checks again
    data = load_data(data_config, reporter)
    cal = make_calibration(data, data_config, size=size, seed=seed, model_spec=spec)
    path = save_calibration(cal, target, force=force, sources=sources)
    reporter.table("calibration set", ["", ""], [["file", str(path)], ["images", len(cal)],
                                                 ["per class", cal.definition["class_counts"]],
                                                 ["pixels sha256", cal.sha256]])


@app.command()
def prune(
    checkpoint: Path = typer.Argument(..., help="an edgekit checkpoint (.pt)"),
    ratio: Optional[float] = typer.Option(None, help=f"channel sparsity in (0, 1); default {PruneConfig.ratio}"),
    target_macs: Optional[float] = typer.Option(None, help="prune until MACs <= this (e.g. 250e6)"),
    importance: Importance = typer.Option(PruneConfig.importance, help="channel importance: weight L1/L2, BN scale, Taylor"),
    global_pruning: bool = typer.Option(PruneConfig.global_pruning, "--global", help="rank channels across layers"),
    depth_tilt: float = typer.Option(PruneConfig.depth_tilt, help="prune later stages harder (> 0, up to 1) or earlier ones (< 0); the mean share is kept"),
    round_to: int = typer.Option(PruneConfig.round_to, help="keep channel counts multiples of this"),
    steps: int = typer.Option(PruneConfig.steps, help="prune -> fine-tune -> BN recalibration rounds"),
    finetune_epochs: int = typer.Option(PruneConfig.finetune_epochs, help="fine-tune epochs per step (0 = none)"),
    finetune_lr: float = typer.Option(PruneConfig.finetune_lr),
    distill: float = typer.Option(PruneConfig.distill_alpha, help="share of the fine-tune loss distilled from the unpruned model (0 = labels only)"),
    cpu_bf16: bool = typer.Option(PruneConfig.cpu_bf16, "--cpu-bf16", help="fine-tune in bf16 on a CPU with AVX512-BF16/AMX"),
    unstructured: bool = typer.Option(PruneConfig.unstructured, "--unstructured", help="zero weights instead (no dense speed-up)"),
    out: Path = typer.Option(Path("artifacts/pruned.pt")),
    threads: int = typer.Option(PruneConfig.threads, help="threads for the latency measurement"),
    seed: int = typer.Option(PruneConfig.seed),
    tensorboard: Optional[Path] = TensorboardOption,
    force: bool = ForceOption,
) -> None:
    """Structured channel pruning with fine-tuning; reports params, MACs, size and CPU latency.

    Example: edgekit prune artifacts/train/best.pt --ratio 0.3 --steps 2 --out artifacts/pruned.pt
    """
    from ..prune import prune_checkpoint

    config = PruneConfig(ratio=ratio if ratio is not None else (None if target_macs is not None else PruneConfig.ratio),
                         target_macs=target_macs, importance=importance,
                         global_pruning=global_pruning, depth_tilt=depth_tilt, round_to=round_to, steps=steps,
                         finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, distill_alpha=distill,
                         cpu_bf16=cpu_bf16, unstructured=unstructured, threads=threads, seed=seed,
                         tensorboard=str(tensorboard) if tensorboard else None)
    try:
        prune_checkpoint(checkpoint, config, out, make_reporter(), force=force)
    except KeyboardInterrupt:
        _interrupted_finetune(out)


@app.command()
def control(
    child: Path = typer.Argument(..., help="a fine-tuned child: `edgekit prune` (with a fine-tune) or `quantize --mode qat`"),
    parent: Optional[Path] = typer.Option(None, help="the child's parent, if not where its manifest says"),
    cpu_bf16: Optional[bool] = typer.Option(None, "--cpu-bf16/--fp32", help="override the recipe's arithmetic (QAT trains in fp32)"),
    out: Optional[Path] = typer.Option(None, help="default: CHILD.control.pt beside the child"),
    force: bool = ForceOption,
) -> None:
    """Fine-tune a child's parent exactly as the child was, so extra training is not sold as compression.

    Example: edgekit control artifacts/pruned.pt   (then read the child against artifacts/pruned.control.pt)
    """
    from ..finetune import control_checkpoint, default_output

    try:
        control_checkpoint(child, out, parent, cpu_bf16, make_reporter(), force=force)
    except KeyboardInterrupt:
        _interrupted_finetune(out if out is not None else default_output(child))


def _interrupted_finetune(out: Path):
    from ..scratch import scratch_dir

    scratch = scratch_dir(out)
    if any(scratch.glob("**/cycle*.pt")):
        typer.echo(f"interrupted: its finished epochs are kept in {scratch}; run the same command again to go on "
                   "from the last one", err=True)
    else:
        typer.echo("interrupted before the first fine-tune epoch finished: nothing to go on from, start again", err=True)
    raise typer.Exit(130)


@app.command()
def quantize(
    checkpoint: Path = typer.Argument(..., help="an edgekit checkpoint (.pt), fp32 or pruned"),
    mode: QuantMode = typer.Option(QuantizeConfig.mode, help="dynamic: fc only; static: calibrated PTQ; qat"),
    method: CalibMethod = typer.Option(QuantizeConfig.method, help="activation calibration; auto keeps the best on val"),
    calibration: Optional[Path] = typer.Option(None, help="calibration/*.json (static and qat)"),
    sensitivity: bool = typer.Option(QuantizeConfig.sensitivity, "--sensitivity", help="per-layer accuracy with one layer int8"),
    keep_float: int = typer.Option(QuantizeConfig.keep_float, help="keep the N most sensitive layers in float"),
    qat_epochs: int = typer.Option(QuantizeConfig.qat_epochs),
    qat_lr: float = typer.Option(QuantizeConfig.qat_lr),
    backend: QuantBackend = typer.Option(QuantizeConfig.backend, help="torch int8 engine: x86 (default here) or "
                                         "qnnpack (ARM: 8-bit activations, per-tensor weights; its latency on x86 "
                                         "is not ARM's)"),
    weights: WeightScheme = typer.Option(QuantizeConfig.weights, help="int8 weight scales: engine (x86: per-channel, "
                                         "qnnpack: per-tensor), per-channel or per-tensor (static and qat)"),
    onnx: bool = typer.Option(QuantizeConfig.export_onnx, help="also write a QDQ ONNX for the exporters"),
    out: Path = typer.Option(Path("artifacts/int8.pt")),
    threads: int = typer.Option(QuantizeConfig.threads, help="threads for the latency measurement"),
    seed: int = typer.Option(QuantizeConfig.seed),
    tensorboard: Optional[Path] = TensorboardOption,
    force: bool = ForceOption,
) -> None:
    """int8 quantization: dynamic (fc only), static PTQ (calibrated) or QAT; writes int8 .pt + manifest.

    Example: edgekit quantize artifacts/train/best.pt --mode static --calibration calibration/cifar10-jpg-512.json
    For ARM boards (PyTorch Mobile-like runtimes): add --backend qnnpack.
    """
    from ..quantize import quantize_checkpoint

    config = QuantizeConfig(mode=mode, method=method, calibration=str(calibration) if calibration else None,
                            sensitivity=sensitivity, keep_float=keep_float, qat_epochs=qat_epochs, qat_lr=qat_lr,
                            backend=backend, weights=weights, export_onnx=onnx, threads=threads, seed=seed,
                            tensorboard=str(tensorboard) if tensorboard else None)
    config.validate()
    try:
        quantize_checkpoint(checkpoint, config, out, make_reporter(), force=force)
    except KeyboardInterrupt:
        if mode is not QuantMode.qat:
            raise
        _interrupted_finetune(out)
