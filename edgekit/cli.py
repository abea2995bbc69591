"""The `edgekit` command: a thin typer layer over the library functions.

Errors: every EdgekitError raised below becomes one line on stderr (problem, then fix) and its
exit code; anything else is a bug and keeps its traceback.

Past the ~500-line guide on purpose: one function per command (thirteen), mostly option
declarations whose defaults are read from the config dataclasses; each body maps options to a
config and calls one library function. Commands import their stage inside the function, so
`edgekit --help` does not load torch.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .config import (Arch, Averaging, BenchConfig, CalibMethod, CalibrationConfig, DataConfig, DataSource, Device,
                     DiagnoseOptions, EvalConfig, ExportOptions, Importance, Optimizer, PruneConfig, QuantBackend,
                     QuantizeConfig, QuantMode, Schedule, Split, TrainConfig, Tta, WeightScheme)
from .errors import EdgekitError, install_hint
from .formats import FORMATS as _FORMATS, export_targets as _export_targets


class _Group(TyperGroup):
    def invoke(self, ctx):
        from .errors import from_os_error

        from typer._click.exceptions import NoArgsIsHelpError, UsageError

        try:
            return super().invoke(ctx)
        except EdgekitError as error:
            _fail(error)
        except NoArgsIsHelpError:
            raise
        except UsageError as error:  # a value typer itself cannot parse: one line too, not a framed box
            command = error.ctx.command_path if error.ctx is not None else "edgekit"
            typer.echo(f"error: {' '.join(error.format_message().split())} -> see '{command} --help'", err=True)
            raise typer.Exit(error.exit_code) from None
        except OSError as error:  # a read-only or full disk, a folder where a file was meant ...
            _fail(from_os_error(error))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        finally:
            from .distributed import shutdown

            shutdown()  # leave torchrun's process group cleanly (a no-op in one process)


def _fail(error: EdgekitError):
    fix = f" -> {error.hint}" if error.hint else ""
    typer.echo(f"error: {error.message}{fix}", err=True)
    raise typer.Exit(error.exit_code) from None


ForceOption = typer.Option(False, "--force", help="replace an existing output that edgekit would otherwise keep")
TensorboardOption = typer.Option(None, "--tensorboard",
                                 help=f"write TensorBoard scalars here ({install_hint('tensorboard')})")


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, prune, quantize, export and benchmark a CIFAR-10 ResNet18 for the edge.")


def _reporter():
    from .distributed import from_env
    from .report import Reporter, RichReporter

    # Under torchrun only rank 0 talks; the others' errors still reach stderr.
    return RichReporter() if from_env().is_main else Reporter()


SourceOption = typer.Option(DataSource.cifar10, "--source", help="cifar10 (download), folder (an ImageFolder tree) or synthetic")
DataDirOption = typer.Option(None, "--data-dir", help="image folder with train/ and test/, or where CIFAR-10 lives")


def _data_config(source: DataSource, data_dir: Optional[Path], val_size: int | None = None,
                 train_per_class: int | None = None, seed: int = 0) -> DataConfig:
    config = DataConfig(source=source, data_dir=str(data_dir) if data_dir else None, seed=seed,
                        train_per_class=train_per_class)
    if val_size is not None:
        config.val_size = val_size
    return config


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
    from . import distributed
    from .data import load_data
    from .model import ModelSpec, build_model
    from .train import resolve_device, train_model

    reporter = _reporter()
    data_config = _data_config(source, data_dir, val_size, train_per_class, seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, arch=arch, width=width, optimizer=optimizer,
                         schedule=schedule, label_smoothing=label_smoothing, cutout=cutout,
                         decay_norm_and_bias=decay_norm_and_bias, averaging=averaging, swa_start=swa_start,
                         swa_lr=swa_lr, accumulate=accumulate, sync_bn=sync_bn,
                         grad_clip=grad_clip, compile=compile, amp=amp, cpu_bf16=cpu_bf16, device=device, seed=seed,
                         threads=threads, tensorboard=str(tensorboard) if tensorboard else None)
    config.validate()
    data_config.validate()
    from .train import check_run_dir

    check_run_dir(out, resume, force)  # before the data is decoded: refusing takes a second, not minutes
    if tensorboard is not None:
        from .artifacts import check_writable_dir

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
    from .evaluate import evaluate_artifact

    reporter = _reporter()
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
    from .describe import describe_artifact

    reporter = _reporter()
    rows, warnings = describe_artifact(artifact)
    for warning in warnings:
        reporter.info(f"warning: {warning}")
    reporter.table(f"{artifact.name}", ["", ""], rows)


@app.command()
def doctor() -> None:
    """What this machine can do: versions, CUDA/GPU, and which formats can run (and how to get the rest).

    Example: edgekit doctor
    """
    from .describe import machine_report

    _reporter().table("edgekit doctor", ["", ""], machine_report())


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
    from .pipeline import PipelineConfig, quick_pipeline_config, run_pipeline

    config = quick_pipeline_config() if quick else PipelineConfig(data=_data_config(source, data_dir), train=TrainConfig())
    if epochs is not None:
        config.train.epochs = epochs
    if arch is not None:
        config.train.arch = arch
    if width is not None:
        config.train.width = width
    config.train.device = device
    run_pipeline(config, out, _reporter())


@app.command()
def bench(
    artifacts: Optional[list[Path]] = typer.Argument(None, help="artifact files (checkpoints, .onnx, .tflite, ...)"),
    directory: Optional[Path] = typer.Option(None, "--dir", help="also bench every artifact (file with a manifest) under this folder"),
    threads: int = typer.Option(BenchConfig.threads, help="threads for every runtime (pinned and recorded)"),
    batches: str = typer.Option("1,8,32,128", help="throughput sweep batch sizes, comma-separated"),
    warmup: int = typer.Option(BenchConfig.warmup, help="untimed batch-1 calls before timing"),
    runs: int = typer.Option(BenchConfig.runs, help="at least this many timed batch-1 calls"),
    min_seconds: float = typer.Option(BenchConfig.min_seconds, help="and at least this many seconds of them"),
    latency_rounds: int = typer.Option(BenchConfig.latency_rounds, help="batch-1 timing in this many alternating rounds over all rows (1: each row alone, after its accuracy)"),
    sweep_seconds: float = typer.Option(BenchConfig.sweep_seconds, help="seconds per batch size in the throughput sweep"),
    test_limit: Optional[int] = typer.Option(None, help="accuracy on the first N test images only (quick runs)"),
    out: Optional[Path] = typer.Option(None, help="result path without suffix (default benchmarks/results/bench-<time>)"),
    baselines: bool = typer.Option(BenchConfig.baselines, "--baselines", help="also make and bench stock ORT quantize_static and TFLite int8"),
    baseline_dir: Path = typer.Option(Path(BenchConfig.baseline_dir), help="where --baselines writes its files"),
    calibration: Optional[Path] = typer.Option(None, help="calibration definition for --baselines (default: the lineage's)"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data each lineage was trained on"),
    data_dir: Optional[Path] = DataDirOption,
    compare: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", help="print per-row deltas B - A of two bench .json files"),
    render: Optional[Path] = typer.Option(None, "--render", help="re-write the .md, .csv and .png of a bench .json (after a report change); measures nothing"),
    diff: bool = typer.Option(BenchConfig.diff, "--diff", help="per row: images flipped against the fp32 root and the class that flipped most"),
) -> None:
    """Accuracy, batch-1 latency (p50/p90/p99, mean with 95% CI), throughput, size and parity of every artifact.

    Example: edgekit bench --dir artifacts/ --threads 2 --out benchmarks/results/bench-cpu
    """
    import datetime

    from .bench import bench as run_bench, compare as compare_runs
    from .errors import ConfigError

    reporter = _reporter()
    if compare:
        compare_runs(compare[0], compare[1], reporter)
        return
    if render is not None:
        from .bench import render as render_run

        reporter.info("bench: rewrote " + ", ".join(str(p) for p in render_run(render).values()))
        return
    try:
        sweep = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batches must be comma-separated integers, got '{batches}'", "use e.g. --batches 1,8,32,128") from None
    data = None
    if source is not None:
        data = _data_config(source, data_dir)
    config = BenchConfig(threads=threads, batches=sweep, warmup=warmup, runs=runs, min_seconds=min_seconds,
                         latency_rounds=latency_rounds, sweep_seconds=sweep_seconds, test_limit=test_limit, baselines=baselines,
                         baseline_dir=str(baseline_dir), calibration=str(calibration) if calibration else None, data=data,
                         diff=diff)
    if out is None:
        out = Path("benchmarks/results") / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    result = run_bench(artifacts or [], config, reporter, directory=directory, out=out)
    if not any(row.status == "ok" for row in result.rows):
        # the first reasons, so a bench of one bad file says what is wrong with it in the one line
        reasons = "; ".join(f"{row.artifact}: {row.why}" for row in result.rows[:2])
        _fail(EdgekitError(f"no row of the bench ran ({' '.join(reasons.split())})", f"see the notes in {out}.md"))


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
    from .calibrate import DEFAULT_DIR, default_name, make_calibration, save_calibration
    from .data import load_data
    from .model import load_checkpoint

    from .artifacts import guard_output

    reporter = _reporter()
    CalibrationConfig(size=size, seed=seed).validate()
    data_config = _data_config(source, data_dir, val_size, None, data_seed).validate({"seed": "data_seed"})
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
    from .prune import prune_checkpoint

    config = PruneConfig(ratio=ratio if ratio is not None else (None if target_macs is not None else PruneConfig.ratio),
                         target_macs=target_macs, importance=importance,
                         global_pruning=global_pruning, round_to=round_to, steps=steps,
                         finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, distill_alpha=distill,
                         cpu_bf16=cpu_bf16, unstructured=unstructured, threads=threads, seed=seed,
                         tensorboard=str(tensorboard) if tensorboard else None)
    try:
        prune_checkpoint(checkpoint, config, out, _reporter(), force=force)
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
    from .finetune import control_checkpoint, default_output

    try:
        control_checkpoint(child, out, parent, cpu_bf16, _reporter(), force=force)
    except KeyboardInterrupt:
        _interrupted_finetune(out if out is not None else default_output(child))


def _interrupted_finetune(out: Path):
    from .scratch import scratch_dir

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
    from .quantize import quantize_checkpoint

    config = QuantizeConfig(mode=mode, method=method, calibration=str(calibration) if calibration else None,
                            sensitivity=sensitivity, keep_float=keep_float, qat_epochs=qat_epochs, qat_lr=qat_lr,
                            backend=backend, weights=weights, export_onnx=onnx, threads=threads, seed=seed,
                            tensorboard=str(tensorboard) if tensorboard else None)
    config.validate()
    try:
        quantize_checkpoint(checkpoint, config, out, _reporter(), force=force)
    except KeyboardInterrupt:
        if mode is not QuantMode.qat:
            raise
        _interrupted_finetune(out)


# Choices come from the format table, so a new target needs no change here.
ExportTarget = Enum("ExportTarget", {name: name for name in _export_targets()}, type=str)
ExportPrecision = Enum("ExportPrecision", {p: p for name in _export_targets() for p in _FORMATS[name].precisions},
                       type=str)


@app.command("export")
def export_command(
    artifact: Path = typer.Argument(..., help="an edgekit checkpoint (.pt) to export"),
    target: ExportTarget = typer.Option(..., "--target", help="the runtime format to write"),
    precision: ExportPrecision = typer.Option(ExportPrecision("fp32"), "--precision", help="as counted in the file afterwards"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="default: beside the checkpoint, e.g. best.fp16.onnx"),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="write a folder to copy to a device instead: the file, "
                                          "its manifest, labels.txt, the standalone runner script(s) and README.txt"),
    batch: int = typer.Option(ExportOptions.batch, "--batch", help="static batch dimension"),
    dynamic_batch: bool = typer.Option(ExportOptions.dynamic_batch, "--dynamic-batch", help="a batch axis of any size instead of --batch"),
    opset: int = typer.Option(ExportOptions.opset, "--opset", help="ONNX opset (17 or newer)"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="calibration definition (needed for int8), from `edgekit calibrate`"),
    parity_images: int = typer.Option(ExportOptions.parity_images, "--parity-images", help="seeded test images the export must agree on"),
    keep_failed: bool = typer.Option(ExportOptions.keep_failed, "--keep-failed", help="keep a file that fails the parity gate as *.failed.*"),
    debug_parity: bool = typer.Option(ExportOptions.debug_parity, "--debug-parity", help="compare every conv output with torch; report the first divergent layer"),
    int8_io: bool = typer.Option(ExportOptions.int8_io, "--int8-io", help="int8 input/output tensors (integer-only TFLite); runners still take floats"),
    threads: Optional[int] = typer.Option(None, help="runtime threads for the parity run"),
    seed: int = typer.Option(ExportOptions.seed, help="seed of the parity image choice"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data the checkpoint was trained on"),
    data_dir: Optional[Path] = DataDirOption,
    force: bool = ForceOption,
) -> None:
    """Export a checkpoint to ONNX / TensorRT / TFLite / SavedModel, refused unless it matches its source.

    The file carries its class names, input layout, shape and pixel scale (`edgekit info` shows them).

    Example: edgekit export artifacts/train/best.pt --target onnx --precision int8 --calibration calibration/cifar10.json

    Example: edgekit export artifacts/train/best.pt --target tflite --precision int8 --int8-io --calibration calibration/cifar10.json --bundle deploy/pi
    """
    from .config import data_config_from_dict
    from .export import export_artifact
    from .qmodel import torch_artifact_spec

    options = ExportOptions(batch=batch, dynamic_batch=dynamic_batch, opset=opset,
                            calibration=str(calibration) if calibration else None, parity_images=parity_images,
                            keep_failed=keep_failed, debug_parity=debug_parity, int8_io=int8_io, threads=threads,
                            seed=seed)
    data = None
    if source is not None or data_dir is not None:
        data = data_config_from_dict(torch_artifact_spec(artifact)[1].get("data_config"))
        if source is not None:
            data.source = source
        if data_dir is not None:
            data.data_dir = str(data_dir)
    if bundle is not None:
        from .bundle import export_bundle
        from .errors import ConfigError

        if out is not None:
            raise ConfigError("--out and --bundle exclude each other", "pass one of them")
        typer.echo(str(export_bundle(artifact, target.value, precision.value, bundle, options, _reporter(),
                                     data_config=data).path))
        return
    result = export_artifact(artifact, target.value, precision.value, out, options, _reporter(), data_config=data,
                             force=force)
    typer.echo(str(result.path))


# ---- look inside: diff and explain (edgekit/diagnose.py) ----


def _override_data(source: Optional[DataSource], data_dir: Optional[Path]) -> Optional[DataConfig]:
    return _data_config(source, data_dir) if source is not None else None


@app.command("diff")
def diff_command(
    parent: Path = typer.Argument(..., help="the reference artifact (any runnable format)"),
    child: Path = typer.Argument(..., help="the artifact made from it (pruned, int8, exported, ...)"),
    split: Split = typer.Option(Split.test),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default artifacts/diff/<parent>-vs-<child>)"),
    limit: Optional[int] = typer.Option(None, help="only the first N images of the split (quick runs)"),
    gradcam_sample: int = typer.Option(DiagnoseOptions.gradcam_sample, help="seeded images on which the Grad-CAM maps are compared"),
    layer: Optional[str] = typer.Option(None, help="Grad-CAM layer (default the last conv stage, layer4)"),
    threads: Optional[int] = typer.Option(None, help="runtime threads"),
    seed: int = typer.Option(DiagnoseOptions.seed, help="seed of the Grad-CAM sample"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data the parent's lineage was trained on"),
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """Image by image, what changed from PARENT to CHILD: flips, McNemar test, per-class accuracy, Grad-CAM.

    Example: edgekit diff artifacts/train/best.pt artifacts/int8.pt --out artifacts/diff/int8
    """
    from .diagnose import diff

    out = out or Path("artifacts/diff") / f"{parent.stem}-vs-{child.stem}"
    diff(parent, child, out, split=split.value, data=_override_data(source, data_dir), limit=limit, threads=threads,
         seed=seed, gradcam_sample=gradcam_sample, layer=layer, reporter=_reporter())
    typer.echo(str(out))


@app.command()
def explain(
    checkpoint: Path = typer.Argument(..., help="a torch checkpoint: fp32, pruned, or static/QAT int8 .pt"),
    images: int = typer.Option(DiagnoseOptions.images, "--images", help="seeded random images to draw Grad-CAM for"),
    index: Optional[str] = typer.Option(None, "--index", help="these image indices instead, comma-separated"),
    layer: Optional[str] = typer.Option(None, help="module to take Grad-CAM at (default layer4, the last conv stage)"),
    split: Split = typer.Option(Split.test),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default artifacts/explain/<checkpoint>)"),
    limit: Optional[int] = typer.Option(None, help="only the first N images of the split"),
    seed: int = typer.Option(DiagnoseOptions.seed),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data it was trained on"),
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """Grad-CAM overlays and the most confident mistakes of one model.

    Example: edgekit explain artifacts/train/best.pt --images 16 --layer layer3
    """
    from .diagnose import explain as run_explain
    from .errors import ConfigError

    indices = None
    if index:
        try:
            indices = [int(i) for i in index.split(",") if i.strip()]
        except ValueError:
            raise ConfigError(f"--index must be comma-separated integers, got '{index}'", "e.g. --index 3,17,42") from None
    out = out or Path("artifacts/explain") / checkpoint.stem
    run_explain(checkpoint, out, images_count=images, indices=indices, layer=layer, split=split.value,
                data=_override_data(source, data_dir), limit=limit, seed=seed, reporter=_reporter())
    typer.echo(str(out))


# ---- stage commands above this line ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
