"""Commands that make and read a trained model: train, eval, info, doctor and the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import (Arch, Averaging, DataConfig, DataSource, Device, EvalConfig, Optimizer, Schedule, Split,
                      TrainConfig, Tta)
from .app import DataDirOption, SourceOption, TensorboardOption, app, data_config_from_options, make_reporter


@app.command()
def train(
    source: DataSource = SourceOption,
    data_dir: Optional[Path] = DataDirOption,
    out: Path = typer.Option(Path("artifacts/train"), help="output folder"),
    epochs: int = typer.Option(TrainConfig.epochs),
    batch_size: int = typer.Option(TrainConfig.batch_size),
    lr: float = typer.Option(TrainConfig.lr, help="peak learning rate"),
    arch: Arch = typer.Option(TrainConfig.arch, help="network: resnet18 or mobilenet_v2 (CIFAR variants)"),
    width: float = typer.Option(TrainConfig.width, help="width multiplier (1.0 = 11.2M parameters)"),
    optimizer: Optimizer = typer.Option(TrainConfig.optimizer),
    schedule: Schedule = typer.Option(TrainConfig.schedule),
    label_smoothing: float = typer.Option(TrainConfig.label_smoothing),
    decay_norm_and_bias: bool = typer.Option(TrainConfig.decay_norm_and_bias, "--decay-norm-and-bias/--no-decay-norm-and-bias",
                                             help="weight decay on BN parameters and biases too"),
    cutout: int = typer.Option(TrainConfig.cutout, help="Cutout square side in pixels (0 = off)"),
    averaging: Averaging = typer.Option(TrainConfig.averaging, help="ema: evaluate and keep an EMA of the weights; swa: keep "
                                        "the mean of per-epoch snapshots after --swa-start"),
    swa_start: Optional[int] = typer.Option(TrainConfig.swa_start, help="SWA: plain epochs before the first snapshot (default: 75 %)"),
    swa_lr: Optional[float] = typer.Option(TrainConfig.swa_lr, help="SWA: learning rate held while snapshots are taken (default: lr / 10)"),
    accumulate: int = typer.Option(TrainConfig.accumulate, help="gradient accumulation: micro-batches per optimizer step (--batch-size stays "
                                   "the effective batch)"),
    sync_bn: bool = typer.Option(TrainConfig.sync_bn, "--sync-bn", help="under torchrun on GPUs: BatchNorm statistics over the "
                                 "global batch (SyncBatchNorm)"),
    grad_clip: Optional[float] = typer.Option(None, help="clip the gradient norm to this value"),
    compile: bool = typer.Option(TrainConfig.compile, "--compile", help="torch.compile the model"),
    amp: bool = typer.Option(TrainConfig.amp, "--amp/--no-amp", help="bf16 autocast on CUDA"),
    cpu_bf16: bool = typer.Option(TrainConfig.cpu_bf16, "--cpu-bf16", help="bf16 autocast on a CPU with AVX512-BF16/AMX (refused "
                                  "elsewhere): faster (benchmarks/train_speed.py), but runs are not bit-identical"),
    device: Device = typer.Option(TrainConfig.device),
    val_size: int = typer.Option(DataConfig.val_size, help="validation images carved from train"),
    train_per_class: Optional[int] = typer.Option(None, help="use only this many training images per class"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch"),
    seed: int = typer.Option(TrainConfig.seed),
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out"),
    tensorboard: Optional[Path] = TensorboardOption,
    force: bool = typer.Option(False, "--force", help="replace a finished or interrupted run in --out"),
) -> None:
    """Train ResNet18 (CUDA when there is a GPU, CPU otherwise); writes best.pt + manifest, metrics, plots.

    Example: edgekit train --source folder --data-dir data/cifar10-jpg --epochs 40

    Several GPUs or machines: torchrun --nproc-per-node=4 -m edgekit.cli train ... (see README);
    --batch-size is then the global batch.
    """
    from .. import distributed
    from ..data import load_data
    from ..model import ModelSpec, build_model
    from ..train import resolve_device, train_model

    reporter = make_reporter()
    data_config = data_config_from_options(source, data_dir, val_size, train_per_class, seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, arch=arch, width=width, optimizer=optimizer,
                         schedule=schedule, label_smoothing=label_smoothing, cutout=cutout,
                         decay_norm_and_bias=decay_norm_and_bias, averaging=averaging, swa_start=swa_start,
                         swa_lr=swa_lr, accumulate=accumulate, sync_bn=sync_bn,
                         grad_clip=grad_clip, compile=compile, amp=amp, cpu_bf16=cpu_bf16, device=device, seed=seed,
                         threads=threads, tensorboard=str(tensorboard) if tensorboard else None)
    config.validate()
    data_config.validate()
    from ..train import check_run_dir

    check_run_dir(out, resume, force)  # before the data is decoded: refusing takes a second, not minutes
    if tensorboard is not None:
        from ..artifacts import check_writable_dir

        check_writable_dir(tensorboard, create=False)
    distributed.check_batch(batch_size, distributed.from_env().size, accumulate)
    if sync_bn:
        distributed.check_sync_bn(resolve_device(device))
    distributed.setup(resolve_device(device).type)
    with distributed.main_first():  # rank 0 writes the decoded-image cache, the others read it
        data = load_data(data_config, reporter)
    model = build_model(ModelSpec.from_width(width, data.num_classes, arch=arch), seed=seed)
    try:
        train_model(model, data, config, out, reporter, resume=resume, data_config=data_config, force=force)
    except KeyboardInterrupt:
        _interrupted_training(out)


def _interrupted_training(out: Path):
    import shlex
    import sys

    state = out / "last.pt"
    if state.exists():
        args = [a for a in sys.argv[1:] if a != "--force"]
        command = shlex.join(["edgekit", *args] + ([] if "--resume" in args else ["--resume"]))
        typer.echo(f"interrupted: the last finished epoch is saved in {state}; resume with: {command}", err=True)
    else:
        typer.echo("interrupted before the first epoch finished: nothing to resume, start again", err=True)
    raise typer.Exit(130)


@app.command("eval")
def evaluate_command(
    artifact: Path = typer.Argument(..., help="any file edgekit writes: a checkpoint, an int8 .pt, an export"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data its lineage was trained on"),
    data_dir: Optional[Path] = DataDirOption,
    split: Split = typer.Option(EvalConfig.split),
    tta: Tta = typer.Option(EvalConfig.tta, help="test-time augmentation, reported beside the plain accuracy "
                                                 "(flip: 2 passes an image, flip-translate: 6); never a deployment figure"),
    batch_size: int = typer.Option(EvalConfig.batch_size),
    threads: Optional[int] = typer.Option(EvalConfig.threads, help="CPU threads for the runtime"),
) -> None:
    """Accuracy of a file on the test (or validation) split, optionally with test-time augmentation.

    Example: edgekit eval benchmarks/models/resnet18-w1-cpu.fp16.pt --tta flip-translate
    """
    from ..evaluate import evaluate_artifact

    reporter = make_reporter()
    result = evaluate_artifact(artifact, EvalConfig(split=split, tta=tta, batch_size=batch_size, threads=threads),
                               source=source, data_dir=data_dir, reporter=reporter)
    reporter.table("evaluation", ["", ""], result.rows())
    if result.tta_accuracy:
        reporter.info("TTA runs several views of each image: the model's reach, not what a deployed file scores")


@app.command()
def info(artifact: Path = typer.Argument(..., help="a checkpoint or exported file")) -> None:
    """Manifest, parameters, MACs, size, precision census and, for an exported file, the metadata it carries.

    Example: edgekit info artifacts/train/best.pt
    """
    from ..describe import describe_artifact

    reporter = make_reporter()
    rows, warnings = describe_artifact(artifact)
    for warning in warnings:
        reporter.info(f"warning: {warning}")
    reporter.table(f"{artifact.name}", ["", ""], rows)


@app.command()
def doctor() -> None:
    """What this machine can do: versions, CUDA/GPU, and which formats can run (and how to get the rest).

    Example: edgekit doctor
    """
    from ..describe import machine_report

    make_reporter().table("edgekit doctor", ["", ""], machine_report())


@app.command()
def pipeline(
    quick: bool = typer.Option(False, "--quick", help="offline demo: synthetic data, narrow model, a few minutes on a CPU"),
    source: DataSource = SourceOption,
    data_dir: Optional[Path] = DataDirOption,
    out: Path = typer.Option(Path("artifacts/pipeline")),
    epochs: Optional[int] = typer.Option(None, help="override the profile's epochs"),
    arch: Optional[Arch] = typer.Option(None, help="override the profile's network (resnet18, mobilenet_v2)"),
    width: Optional[float] = typer.Option(None, help="override the profile's width multiplier"),
    device: Device = typer.Option(Device.auto),
) -> None:
    """Train, calibrate, prune, quantize (static, QAT), export every runnable target, bench; resumable.

    A stage whose artifact exists with the same config and parent is skipped.

    Example: edgekit pipeline --quick
    """
    from ..pipeline import PipelineConfig, quick_pipeline_config, run_pipeline

    config = quick_pipeline_config() if quick else PipelineConfig(data=data_config_from_options(source, data_dir), train=TrainConfig())
    if epochs is not None:
        config.train.epochs = epochs
    if arch is not None:
        config.train.arch = arch
    if width is not None:
        config.train.width = width
    config.train.device = device
    run_pipeline(config, out, make_reporter())
