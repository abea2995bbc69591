"""The trainer: one loop for training from scratch and for every fine-tune (prune, QAT).

`train_model` checks the output folder and holds its lock; `_train` is the run itself, top to
bottom. Its pieces (and the recipe's choices, and why) are in edgekit.train_loop; last.pt, what
resuming reads, in edgekit.train_state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .artifacts import (Manifest, atomic_write_text, guard_folder, guard_output, keep_unless_forced, parent_ref,
                        publish, remove_path, run_lock, staging_path, to_plain)
from .config import DataConfig, TrainConfig
from .data import DataSplits
from .formats import SOURCE_FORMAT
from .measure import evaluate
from .model import ResNet18, save_checkpoint
from .report import Reporter, quiet
# The recipe's public names stay importable from the stage's entry module.
from .train_loop import (Progress, cpu_has_native_bf16, distillation_loss, evaluate_epoch,  # noqa: F401
                         keep_average, lr_factor, release, resolve_device, set_up, start_stepping, train_epoch)
from .train_state import StateFile, run_config_of


@dataclass
class TrainResult:
    model: ResNet18
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_accuracy: float = 0.0
    best_epoch: int = 0
    test_accuracy: float | None = None
    checkpoint: Path | None = None
    wall_seconds: float = 0.0


@dataclass
class TrainJob:
    """One `train_model` call: what to train on what, with which recipe, and where its files go."""
    model: ResNet18
    data: DataSplits
    config: TrainConfig
    data_config: DataConfig
    out_dir: Path | None = None
    reporter: Reporter = quiet
    resume: bool = False
    parent: Path | None = None  # the checkpoint a fine-tune started from, recorded in the manifest
    teacher: nn.Module | None = None
    logger: Any = None  # a tensorboard_log.TrainingLogger
    state_path: Path | None = None  # last.pt when there is no out_dir (a fine-tune's scratch folder)


def train_model(model: ResNet18, data: DataSplits, config: TrainConfig, out_dir: Path | None = None,
                reporter: Reporter = quiet, *, resume: bool = False, parent: Path | None = None,
                data_config: DataConfig | None = None, teacher: nn.Module | None = None,
                logger: Any = None, force: bool = False, state_path: Path | None = None) -> TrainResult:
    """Train `model` in place with the config's recipe; return it with the best-by-validation weights.

    With a `teacher` and `config.distill_alpha > 0`, the loss mixes in distillation from the
    teacher's logits on the same augmented batch. `logger` (a tensorboard_log.TrainingLogger) gets
    scalars per step and epoch; without one, `config.tensorboard` names the folder of a shared one.
    With `out_dir`, the run holds a lock there (a second writer is refused), and an earlier run in
    it is continued only with `resume` and replaced only with `force`. Without one, `state_path`
    alone is where every epoch's training state goes and what `resume` continues (a fine-tune,
    whose output is its caller's to write).

    Under torchrun (see edgekit.distributed) every process calls this with the same arguments;
    they train one model data-parallel, and only rank 0 reports, holds the lock and writes."""
    config.validate()
    if data_config is not None:
        data_config.validate()
    world = distributed.setup(resolve_device(config.device).type)
    if not world.is_main:
        reporter, logger = quiet, None
    job = TrainJob(model=model, data=data, config=config, data_config=data_config or DataConfig(),
                   out_dir=Path(out_dir) if out_dir is not None else None, reporter=reporter, resume=resume,
                   parent=parent, teacher=teacher, logger=logger, state_path=state_path)
    if job.out_dir is not None and state_path is not None:
        raise ValueError("pass out_dir or state_path, not both: a run's state is out_dir/last.pt")
    if job.out_dir is None:
        return _train(job, world)
    check_run_dir(job.out_dir, resume, force)
    if not world.is_main:  # reads last.pt on --resume, writes nothing
        return _train(job, world)
    with run_lock(job.out_dir, reporter.info):  # also proves out_dir writable before the first epoch
        return _train(job, world)


def check_run_dir(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to start a fresh run over a finished or interrupted one unless told (--resume or --force)."""
    guard_folder(out_dir)
    if distributed.from_env().is_main:  # its write probe is a write: rank 0's alone under torchrun
        guard_output(out_dir / "best.pt", "checkpoint", force=force or resume)
    if resume:
        return
    keep_unless_forced(out_dir / "best.pt", f"{out_dir} holds a finished run (best.pt)", force)
    keep_unless_forced(out_dir / "last.pt", f"{out_dir} holds an interrupted run (last.pt)", force,
                       ways=("pass --resume to continue it",))


def _train(job: TrainJob, world: distributed.World) -> TrainResult:
    """The run, top to bottom."""
    config, data, reporter = job.config, job.data, job.reporter
    run = set_up(job.model, data, config, job.teacher, world)
    state = StateFile(job.out_dir / "last.pt" if job.out_dir else job.state_path,
                      run_config_of(config, job.data_config, data), config.config_hash(job.data_config))
    progress = state.resume(run, reporter) if job.resume else Progress()
    start_stepping(run)  # after resuming: DDP starts every rank from rank 0's (resumed) weights
    logger = _logger(job, world, progress.epochs_done * run.steps_per_epoch, progress.epochs_done)

    for epoch in range(progress.epochs_done, config.epochs):
        totals = train_epoch(run, epoch, reporter, logger, state.path)
        record = evaluate_epoch(run, data, epoch, totals)
        _report_epoch(record, reporter, logger)
        progress.add(record, run.eval_model)
        state.save(run, progress)  # every epoch: an interrupted run loses at most the one it was in

    swa = keep_average(run, data, progress, reporter)
    release(run)
    model = run.model  # with the kept weights: the best epoch's (or its EMA's), or the SWA mean
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    model.eval()
    result = TrainResult(model=model, history=progress.history, best_val_accuracy=progress.best_val,
                         best_epoch=progress.best_epoch, wall_seconds=time.perf_counter() - run.started)
    test = evaluate(model, data.test_x, data.test_y, config.eval_batch_size) if world.is_main else None
    result.test_accuracy = distributed.broadcast_object(test["accuracy"] if test else None)
    if job.out_dir is not None:
        if world.is_main:
            _write_outputs(job, result, test, _metrics(result, test, swa, world.size), state.config_hash)
        distributed.barrier()  # when any rank returns, best.pt and its manifest are there
        result.checkpoint = job.out_dir / "best.pt"
    _report_summary(result, reporter)
    return result


def _logger(job: TrainJob, world: distributed.World, steps_done: int, epochs_done: int) -> Any:
    """The TensorBoard logger, if any, its curves continued where a resumed run stopped."""
    logger = job.logger
    if logger is None and job.config.tensorboard is not None and world.is_main:
        from .tensorboard_log import shared_logger

        logger = shared_logger(job.config.tensorboard)
    if logger is not None:
        logger.skip(steps_done, epochs_done)
    return logger


def _report_epoch(record: dict[str, Any], reporter: Reporter, logger: Any) -> None:
    if logger is not None:
        logger.epoch(record)
    reporter.info(f"epoch {record['epoch']}: loss {record['train_loss']:.3f}  val {record['val_accuracy']:.2%}  "
                  f"test {record['test_accuracy']:.2%}  {record['images_per_second']:.0f} img/s")


def _report_summary(result: TrainResult, reporter: Reporter) -> None:
    history = result.history
    reporter.table("training summary", ["metric", "value"], [
        ["best epoch", result.best_epoch], ["best val accuracy", f"{result.best_val_accuracy:.2%}"],
        ["test accuracy (best-by-val weights)", f"{result.test_accuracy:.2%}"],
        ["wall time (s)", round(result.wall_seconds, 1)],
        ["images/s (last epoch)", round(history[-1]["images_per_second"]) if history else 0],
        ["checkpoint", str(result.checkpoint or "-")],
    ])


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    index = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def _metrics(result: TrainResult, test: dict, swa: bool, processes: int) -> dict[str, Any]:
    metrics = {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
               "test_accuracy": result.test_accuracy, "test_loss": test["loss"],
               "wall_seconds": result.wall_seconds, "epochs": len(result.history)}
    if swa:  # the kept weights are the SWA mean, not one epoch's
        metrics["kept"] = "swa"
    if processes > 1:
        metrics["processes"] = processes
    return metrics


def _write_outputs(job: TrainJob, result: TrainResult, test: dict, metrics: dict[str, Any], config_hash: str) -> Path:
    """best.pt with its manifest, metrics.json, and the curves and confusion plots, in the run's folder."""
    from .report import plot_confusion, plot_training_curves

    out_dir, data, config, data_config = job.out_dir, job.data, job.config, job.data_config
    checkpoint = out_dir / "best.pt"
    extra = {"data_config": to_plain(data_config), "data": data.describe(),
             "train_config": to_plain(config), "metrics": metrics}
    staged = staging_path(checkpoint)
    try:  # best.pt and its manifest appear together
        save_checkpoint(staged, result.model, data.classes, extra)
        publish(staged, checkpoint, Manifest(kind="checkpoint", format=SOURCE_FORMAT.name, precision="fp32",
                                             parent=parent_ref(job.parent),
                                             config={"train": config, "data": data_config}, seed=config.seed,
                                             metrics=metrics, extra={"data": data.describe(),
                                                                     "config_hash": config_hash}))
    finally:
        remove_path(staged)
    atomic_write_text(out_dir / "metrics.json", _json({"metrics": metrics, "history": result.history,
                                                       "config": to_plain(config), "data": data.describe()}))
    plot_training_curves(result.history, out_dir / "curves.png")
    confusion = confusion_matrix(test["predictions"], data.test_y, data.num_classes)
    plot_confusion(confusion, data.classes, out_dir / "confusion.png",
                   title=f"test confusion (accuracy {result.test_accuracy:.2%})")
    job.reporter.info(f"train: wrote {checkpoint}, metrics.json, curves.png, confusion.png in {out_dir}")
    return checkpoint


def _json(value: Any) -> str:
    import json

    return json.dumps(to_plain(value), indent=2) + "\n"
