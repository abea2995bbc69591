"""The `edgekit` command: a thin typer layer over the library functions.

Errors: every EdgekitError raised below becomes one line on stderr (problem, then fix) and its
exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from .config import Averaging, DataConfig, DataSource, Device, Optimizer, Schedule, TrainConfig, quick_profile
from .errors import EdgekitError


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgekitError as error:
            fix = f" -> {error.hint}" if error.hint else ""
            typer.echo(f"error: {error.message}{fix}", err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, prune, quantize, export and benchmark a CIFAR-10 ResNet18 for the edge.")


def _reporter():
    from .report import RichReporter

    return RichReporter()


class Split(str, Enum):
    test = "test"
    val = "val"


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
    width: float = typer.Option(1.0, help="width multiplier (1.0 = 11.2M parameters)"),
    optimizer: Optimizer = typer.Option(Optimizer.sgd),
    schedule: Schedule = typer.Option(Schedule.onecycle),
    label_smoothing: float = typer.Option(TrainConfig.label_smoothing),
    cutout: int = typer.Option(0, help="Cutout square side in pixels (0 = off)"),
    averaging: Averaging = typer.Option(Averaging.none, help="ema: evaluate and keep an EMA of the weights"),
    grad_clip: Optional[float] = typer.Option(None, help="clip the gradient norm to this value"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model"),
    device: Device = typer.Option(Device.auto),
    val_size: int = typer.Option(DataConfig.val_size, help="validation images carved from train"),
    train_per_class: Optional[int] = typer.Option(None, help="use only this many training images per class"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out"),
) -> None:
    """Train ResNet18 (CUDA when there is a GPU, CPU otherwise); writes best.pt + manifest, metrics, plots.

    Example: edgekit train --source folder --data-dir data/cifar10-jpg --epochs 40
    """
    from .data import load_data
    from .model import ModelSpec, build_model
    from .train import train_model

    reporter = _reporter()
    data_config = _data_config(source, data_dir, val_size, train_per_class, seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, width=width, optimizer=optimizer,
                         schedule=schedule, label_smoothing=label_smoothing, cutout=cutout, averaging=averaging,
                         grad_clip=grad_clip, compile=compile, device=device, seed=seed, threads=threads)
    data = load_data(data_config, reporter)
    model = build_model(ModelSpec.from_width(width, data.num_classes))
    train_model(model, data, config, out, reporter, resume=resume, data_config=data_config)


@app.command("eval")
def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="an edgekit checkpoint (.pt)"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data it was trained on"),
    data_dir: Optional[Path] = DataDirOption,
    split: Split = typer.Option(Split.test),
    batch_size: int = typer.Option(1024),
) -> None:
    """Accuracy of a checkpoint on the test (or validation) split.

    Example: edgekit eval artifacts/train/best.pt --source folder --data-dir data/cifar10-jpg
    """
    from .config import data_config_from_dict
    from .data import load_data
    from .model import load_checkpoint
    from .train import evaluate

    reporter = _reporter()
    loaded = load_checkpoint(checkpoint)
    data_config = data_config_from_dict(loaded.extra.get("data_config"))
    if source is not None:
        data_config.source = source
    if data_dir is not None:
        data_config.data_dir = str(data_dir)
    data = load_data(data_config, reporter)
    _check_classes(loaded.classes, data.classes, checkpoint)
    images, labels = (data.test_x, data.test_y) if split is Split.test else (data.val_x, data.val_y)
    result = evaluate(loaded.build(), images, labels, batch_size)
    recorded = loaded.extra.get("metrics", {}).get("test_accuracy")
    rows = [["checkpoint", str(checkpoint)], ["data", data.source], ["split", f"{split.value} ({len(labels)} images)"],
            ["accuracy", f"{result['accuracy']:.2%}"], ["loss", round(result["loss"], 4)]]
    if recorded is not None and split is Split.test:
        rows.append(["recorded test accuracy", f"{recorded:.2%}"])
    reporter.table("evaluation", ["", ""], rows)


def _check_classes(expected: list[str], found: list[str], checkpoint: Path) -> None:
    from .errors import DataError

    if expected and expected != found:
        raise DataError(f"{checkpoint} was trained on classes {expected}, the data has {found}",
                        "evaluate on the data it was trained on (--source/--data-dir)")


@app.command()
def info(artifact: Path = typer.Argument(..., help="a checkpoint or exported file")) -> None:
    """Manifest, parameters, MACs, size and the precision census of an artifact.

    Example: edgekit info artifacts/train/best.pt
    """
    from .artifacts import manifest_path, read_manifest
    from .errors import CheckpointError
    from .formats import format_of_path

    reporter = _reporter()
    if not artifact.exists():
        raise CheckpointError(f"artifact not found: {artifact}", "check the path")
    size = sum(p.stat().st_size for p in artifact.rglob("*")) if artifact.is_dir() else artifact.stat().st_size
    rows: list[list] = [["file", str(artifact)], ["size (MB)", round(size / 1e6, 3)]]
    fmt = format_of_path(artifact)
    rows.append(["format", fmt.name])
    if fmt.name == "torch":
        from .model import count_macs, count_parameters, load_checkpoint

        model = load_checkpoint(artifact).build()
        rows += [["parameters", count_parameters(model)], ["MACs (batch 1)", count_macs(model)],
                 ["stage channels", list(model.spec.stage_channels)]]
    rows.append(["census", json.dumps(fmt.module().census(artifact))])
    if manifest_path(artifact).exists():
        manifest = read_manifest(artifact)
        for key in ("kind", "precision", "command", "seed", "created"):
            rows.append([key, manifest.get(key)])
        parent = manifest.get("parent") or {}
        rows.append(["parent", f"{parent.get('path')} ({parent.get('sha256', '')[:12]})" if parent else "-"])
        rows.append(["metrics", json.dumps(manifest.get("metrics", {}))])
    else:
        rows.append(["manifest", "none"])
    reporter.table(f"{artifact.name}", ["", ""], rows)


@app.command()
def doctor() -> None:
    """What this machine can do: versions, CUDA/GPU, and which formats can run (and how to get the rest).

    Example: edgekit doctor
    """
    import torch

    from .artifacts import library_versions, machine_info
    from .formats import FORMATS

    reporter = _reporter()
    rows = [[name, version] for name, version in library_versions().items()]
    machine = machine_info()
    rows += [["cpu", machine["processor"]], ["cores", machine["cpu_count"]]]
    if torch.cuda.is_available():
        rows.append(["cuda", f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"])
    else:
        rows.append(["cuda", "no GPU visible to torch (training runs on the CPU; for CUDA see README 'GPU set-up')"])
    for name, fmt in FORMATS.items():
        try:
            reason = fmt.unavailable_reason()
        except ImportError as exc:  # the format module itself is not in this build yet
            reason = f"format module missing ({exc})"
        rows.append([f"format {name}", "available" if reason is None else f"unavailable: {reason}"])
    reporter.table("edgekit doctor", ["", ""], rows)


@app.command()
def pipeline(
    quick: bool = typer.Option(False, "--quick", help="offline demo: synthetic data, narrow model, a few minutes on a CPU"),
    source: DataSource = SourceOption,
    data_dir: Optional[Path] = DataDirOption,
    out: Path = typer.Option(Path("artifacts/pipeline")),
    epochs: Optional[int] = typer.Option(None, help="override the profile's epochs"),
    width: Optional[float] = typer.Option(None, help="override the profile's width multiplier"),
    device: Device = typer.Option(Device.auto),
) -> None:
    """Run every stage in order; a stage whose artifact exists with the same config is skipped.

    Example: edgekit pipeline --quick
    """
    from .pipeline import run_pipeline

    if quick:
        data_config, train_config = quick_profile()
    else:
        data_config, train_config = _data_config(source, data_dir), TrainConfig()
    if epochs is not None:
        train_config.epochs = epochs
    if width is not None:
        train_config.width = width
    train_config.device = device
    run_pipeline(data_config, train_config, out, _reporter())


# ---- stage commands above this line ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
