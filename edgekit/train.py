"""The trainer: one loop for training from scratch and for every fine-tune (prune, QAT).

Choices, and why:
- SGD with Nesterov momentum and label smoothing 0.1: the standard, well-understood CIFAR
  ResNet recipe; smoothing costs nothing and buys ~0.3-0.5 pt on short schedules.
- One-cycle (linear warm-up, then linear decay to zero) by default: for a fixed, short epoch
  budget it reaches a given accuracy in fewer epochs than step schedules; warm-up + cosine is
  offered for longer runs. Schedules are per step, pure functions of the step, so resuming is
  exact.
- Weight decay on every parameter, BN scales and biases included, as in the published
  baselines (`--no-decay-norm-and-bias` leaves them out, the large-batch ImageNet habit).
- Augmentation on whole batches on the training device, with random numbers drawn from one
  seeded CPU generator: reproducible and resumable on any device.
- bf16 autocast on CUDA (fp16 + GradScaler where bf16 is not supported), opt-in on CPUs with native bf16;
  channels_last.
- Data-parallel under torchrun (edgekit.distributed): every rank augments the same global batch
  and trains on its slice, so N processes follow the one-process run; `--accumulate K` sums K
  micro-batches per optimizer step. Both keep `--batch-size` the batch of one step, so the
  schedule, counted in optimizer steps, does not change. EMA and SWA: edgekit.averaging.
- Optional knowledge distillation from a teacher (Hinton et al.: temperature-softened KL, scaled
  by T^2 so its gradients stay comparable to the label loss): prune fine-tunes use the unpruned
  model, which recovers more accuracy per epoch than labels alone.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .artifacts import (Manifest, atomic_write_text, cpu_flags, guard_output, parent_ref,
                        publish, remove_path, run_lock, staging_path, to_plain)
from .averaging import make_averager
from .config import DataConfig, Device, Optimizer, Schedule, TrainConfig
from .data import DataSplits, augment, batches, to_unit_float
from .errors import CheckpointError, ConfigError, DataError, DependencyError, OutputError
from .formats import SOURCE_FORMAT
from .measure import evaluate
from .model import ResNet18, save_checkpoint
from .report import Reporter, quiet
from .train_state import check_resume_config, load_train_state, run_config_of, save_train_state


@dataclass
class TrainResult:
    model: ResNet18
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_accuracy: float = 0.0
    best_epoch: int = 0
    test_accuracy: float | None = None
    checkpoint: Path | None = None
    wall_seconds: float = 0.0


def resolve_device(device: Device | str) -> torch.device:
    device = Device(device)
    if device is Device.cuda and not torch.cuda.is_available():
        raise DependencyError("--device cuda was asked for, but no CUDA GPU is visible to torch",
                              "use --device cpu, or install the NVIDIA driver and a CUDA build of torch (see README)")
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: Schedule, warmup_start: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup_steps and step < warmup_steps:
        if warmup_start > 0:  # the published triangle: from warmup_start at step 0 up to 1
            return warmup_start + (1.0 - warmup_start) * step / warmup_steps
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule is Schedule.onecycle:
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 and not config.decay_norm_and_bias else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def cpu_has_native_bf16() -> bool:
    """bf16 matmuls in hardware (AVX512-BF16 or AMX); elsewhere CPU bf16 is emulated and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def _autocast(device: torch.device, config: TrainConfig):
    if device.type == "cpu" and config.cpu_bf16:
        if not cpu_has_native_bf16():
            raise ConfigError("--cpu-bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has neither",
                              "drop --cpu-bf16 (emulated bf16 is slower than fp32)")
        # Opt-in: faster at width >= 0.25 on a CPU with native bf16 (benchmarks/train_speed.py measures
        # it where it runs), but two runs with one seed did not give identical weights.
        return torch.autocast("cpu", dtype=torch.bfloat16), None, "bf16"
    if device.type != "cuda" or not config.amp:
        return torch.autocast(device.type, enabled=False), None, "fp32"
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None, "bf16"
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda"), "fp16"


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    index = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean."""
    log_student = nn.functional.log_softmax(student_logits / temperature, dim=1)
    log_teacher = nn.functional.log_softmax(teacher_logits / temperature, dim=1)
    return nn.functional.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature ** 2


def train_model(model: ResNet18, data: DataSplits, config: TrainConfig, out_dir: Path | None = None,
                reporter: Reporter = quiet, resume: bool = False, parent: Path | None = None,
                data_config: DataConfig | None = None, teacher: nn.Module | None = None,
                logger: Any = None, force: bool = False) -> TrainResult:
    """Train `model` in place with the config's recipe; return it with the best-by-validation weights.

    With a `teacher` and `config.distill_alpha > 0`, the loss mixes in distillation from the
    teacher's logits on the same augmented batch. `logger` (a tensorboard_log.TrainingLogger) gets
    scalars per step and epoch; without one, `config.tensorboard` names the folder of a shared one.
    With `out_dir`, the run holds a lock there (a second writer is refused), and an earlier run in
    it is continued only with `resume` and replaced only with `force`.

    Under torchrun (see edgekit.distributed) every process calls this with the same arguments;
    they train one model data-parallel, and only rank 0 reports, holds the lock and writes."""
    config.validate()
    if data_config is not None:
        data_config.validate()
    world = distributed.setup(resolve_device(config.device).type)
    if not world.is_main:
        reporter, logger = quiet, None
    if out_dir is None:
        return _train_model(model, data, config, None, reporter, resume, parent, data_config, teacher, logger, world)
    out_dir = Path(out_dir)
    check_run_dir(out_dir, resume, force)
    if not world.is_main:  # reads last.pt on --resume, writes nothing
        return _train_model(model, data, config, out_dir, reporter, resume, parent, data_config, teacher, logger, world)
    with run_lock(out_dir, reporter.info):  # also proves out_dir writable before the first epoch
        return _train_model(model, data, config, out_dir, reporter, resume, parent, data_config, teacher, logger, world)


def check_run_dir(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to start a fresh run over a finished or interrupted one unless told (--resume or --force)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file, not a folder", "pass a folder for the run")
    if distributed.from_env().is_main:  # its write probe is a write: rank 0's alone under torchrun
        guard_output(out_dir / "best.pt", "checkpoint", force=force or resume)
    if resume or force:
        return
    if (out_dir / "best.pt").exists():
        raise OutputError(f"{out_dir} holds a finished run (best.pt); a new run would replace it",
                          "pass another --out, or --force to replace it")
    if (out_dir / "last.pt").exists():
        raise OutputError(f"{out_dir} holds an interrupted run (last.pt); a new run would replace it",
                          "pass --resume to continue it, --force to start over, or another --out")


def _train_model(model: ResNet18, data: DataSplits, config: TrainConfig, out_dir: Path | None,
                 reporter: Reporter, resume: bool, parent: Path | None,
                 data_config: DataConfig | None, teacher: nn.Module | None, logger: Any = None,
                 world: distributed.World = distributed.World()) -> TrainResult:
    if data.num_classes < 2:
        raise DataError(f"the data has {data.num_classes} class ({', '.join(data.classes)}); training needs at least two",
                        "add a second class folder (train/<class>/ and test/<class>/)")
    if len(data.train_y) == 0:
        raise ConfigError("the training split is empty", "use more data or a smaller --val-size")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = distributed.device_for(resolve_device(config.device), world)
    out_dir = Path(out_dir) if out_dir else None
    start = time.perf_counter()

    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if config.sync_bn:
        distributed.to_sync_batchnorm(model, device, world)
    optimizer = _optimizer(model, config)
    # One optimizer step = one global batch: world size x accumulate micro-batches of `micro` images.
    parts = world.size * config.accumulate
    distributed.check_batch(config.batch_size, world.size, config.accumulate)
    if len(data.train_y) < parts:
        raise ConfigError(f"the training split has {len(data.train_y)} images, fewer than the {parts} micro-batches "
                          "of one step", "use more data, fewer processes or a smaller --accumulate")
    batch_size = min(config.batch_size, len(data.train_y) // parts * parts)
    micro = batch_size // parts
    steps_per_epoch = len(data.train_y) // batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup = config.warmup_steps(steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, config.schedule, config.warmup_start))
    autocast, scaler, precision = _autocast(device, config)
    averager = make_averager(model, config, optimizer, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    distill = teacher is not None and config.distill_alpha > 0
    if distill:
        teacher.to(device).to(memory_format=memory_format).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    # Cutout fills with the training images' mean colour (about 0 after normalization), as in
    # DeVries & Taylor and the airbench baselines.
    cutout_fill = tuple((data.train_x.double().mean((0, 2, 3)) / 255).tolist()) if config.cutout else 0.0
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)

    history: list[dict[str, Any]] = []
    best_val, best_epoch, best_state = -1.0, 0, None
    first_epoch = 0
    state_path = out_dir / "last.pt" if out_dir else None
    data_config = data_config or DataConfig()
    config_hash = config.config_hash(data_config)
    run_config = run_config_of(config, data_config, data)
    if resume:
        if state_path is None or not state_path.exists():
            raise CheckpointError(f"nothing to resume: {state_path} does not exist",
                                  "start without --resume, or point --out at the interrupted run")
        state = load_train_state(state_path)  # on every rank: optimizer, RNG and generator states included
        check_resume_config(state, run_config, config_hash)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if averager.key is not None:
            averager.load_state_dict(state.get(averager.key))
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best_val, best_epoch = state["history"], state["best_val"], state["best_epoch"]
        best_state = state["best_model"]
        first_epoch = state["epoch"]
        reporter.info(f"train: resumed from {state_path} after epoch {first_epoch}")
        if state.get("processes", 1) != world.size:  # BatchNorm sees another slice size from here on
            reporter.info(f"train: the interrupted run had {state.get('processes', 1)} process(es), this one "
                          f"{world.size}")
    ddp_model = distributed.wrap(model, device, world)  # DDP broadcasts rank 0's weights here
    step_model = torch.compile(ddp_model) if config.compile else ddp_model
    if logger is None and config.tensorboard is not None and world.is_main:
        from .tensorboard_log import shared_logger

        logger = shared_logger(config.tensorboard)
    if logger is not None:
        logger.skip(first_epoch * steps_per_epoch, first_epoch)

    eval_model = averager.eval_module(model)
    # Per-epoch accuracies run under the training autocast; the final test of the kept weights is fp32.
    for epoch in range(first_epoch, config.epochs):
        model.train()
        averager.start_epoch(epoch)
        epoch_start = time.perf_counter()
        seen, correct, loss_sum = 0, 0, 0.0
        with reporter.progress(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch) as bar:
            for x, y in batches(train_x, train_y, batch_size, generator, drop_last=True):
                # The whole global batch is augmented on every rank (the same random numbers), then each
                # keeps its slice: N processes see exactly the images and crops one process would.
                x = augment(to_unit_float(x), generator, cutout=config.cutout, cutout_fill=cutout_fill)
                x, y = distributed.shard(x, world), distributed.shard(y, world)
                x = x.contiguous(memory_format=memory_format)
                optimizer.zero_grad(set_to_none=True)
                step_loss, step_correct = 0.0, 0
                for k, (x_k, y_k) in enumerate(zip(x.split(micro), y.split(micro))):
                    # Gradients are all-reduced once per step, on the last micro-batch.
                    last = k == config.accumulate - 1
                    with contextlib.nullcontext() if last or not world.distributed else ddp_model.no_sync():
                        with autocast:
                            logits = step_model(x_k)
                            loss = criterion(logits.float(), y_k)
                            if distill:
                                with torch.no_grad():
                                    teacher_logits = teacher(x_k).float()
                                loss = ((1 - config.distill_alpha) * loss + config.distill_alpha
                                        * distillation_loss(logits.float(), teacher_logits, config.distill_temperature))
                        # The mean over the step's images: each micro-batch's mean / accumulate (DDP averages ranks).
                        scaled = loss / config.accumulate
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    # .item() syncs with the GPU; once per micro-batch is cheap next to a ResNet18 step.
                    step_loss += loss.item() * len(y_k)
                    step_correct += (logits.argmax(1) == y_k).sum().item()
                if world.distributed:  # the global batch's loss and hits, the same on every rank
                    step_loss, step_correct = distributed.sum_across([step_loss, step_correct], device)
                step_loss, step_correct = step_loss / batch_size, int(step_correct)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if not averager.owns_lr(epoch):  # SWA anneals and holds its own rate
                    scheduler.step()
                averager.after_step(model, epoch)
                if not math.isfinite(step_loss):
                    raise _diverged(step_loss, epoch, seen // batch_size + 1, config, state_path)
                seen += batch_size
                loss_sum += step_loss * batch_size
                correct += step_correct
                images_per_second = seen / max(time.perf_counter() - epoch_start, 1e-9)
                bar.advance(1, loss=loss_sum / seen, acc=correct / seen, img_s=images_per_second)
                if logger is not None:
                    logger.step(step_loss, step_correct / batch_size, optimizer.param_groups[0]["lr"],
                                images_per_second)
        train_seconds = time.perf_counter() - epoch_start
        averager.after_epoch(model, epoch)
        _same_buffers(model, averager, world)  # every rank keeps rank 0's BN statistics
        record = None
        if world.is_main:  # rank 0 evaluates; the others get its numbers, so all pick the same best epoch
            val = evaluate(eval_model, data.val_x, data.val_y, config.eval_batch_size, device, config.channels_last,
                           autocast)
            test = evaluate(eval_model, data.test_x, data.test_y, config.eval_batch_size, device,
                            config.channels_last, autocast)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                      "train_accuracy": correct / max(seen, 1), "val_loss": val["loss"],
                      "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
                      "lr": optimizer.param_groups[0]["lr"], "images_per_second": seen / max(train_seconds, 1e-9),
                      "epoch_seconds": train_seconds, "elapsed_seconds": time.perf_counter() - start,
                      "eval_precision": precision}
            if world.distributed:
                record["processes"] = world.size
        record = distributed.broadcast_object(record)
        history.append(record)
        if logger is not None:
            logger.epoch(record)
        reporter.info(f"epoch {epoch + 1}: loss {record['train_loss']:.3f}  val {record['val_accuracy']:.2%}  "
                      f"test {record['test_accuracy']:.2%}  {record['images_per_second']:.0f} img/s")
        if record["val_accuracy"] > best_val:
            best_val, best_epoch = record["val_accuracy"], epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}
        if state_path is not None and world.is_main:
            save_train_state(state_path, model, optimizer, scheduler, scaler, averager, generator, epoch + 1,
                             history, best_val, best_epoch, best_state, config_hash, run_config, world.size)

    averaged = averager.finish(model, (to_unit_float(x).contiguous(memory_format=memory_format)
                                       for x, _ in batches(train_x, train_y, config.eval_batch_size)), device)
    if averaged is not None:  # SWA keeps the mean of its snapshots, with BN statistics of its own
        _same_buffers(averaged, None, world)
        val = evaluate(averaged, data.val_x, data.val_y, config.eval_batch_size, device, config.channels_last,
                       autocast) if world.is_main else None
        best_val, best_epoch = distributed.broadcast_object(val["accuracy"] if val else None), len(history)
        best_state = {k: v.detach().cpu().clone() for k, v in averaged.state_dict().items()}
        reporter.info(f"train: kept the SWA mean of {int(averager.averaged.n_averaged)} snapshots "
                      f"(val {best_val:.2%})")
    if config.sync_bn:
        distributed.from_sync_batchnorm(model)
    model.to("cpu").to(memory_format=torch.contiguous_format)
    if distill:
        teacher.to("cpu").to(memory_format=torch.contiguous_format)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result = TrainResult(model=model, history=history, best_val_accuracy=best_val, best_epoch=best_epoch,
                         wall_seconds=time.perf_counter() - start)
    test = evaluate(model, data.test_x, data.test_y, config.eval_batch_size) if world.is_main else None
    result.test_accuracy = distributed.broadcast_object(test["accuracy"] if test else None)
    if out_dir is not None:
        if world.is_main:
            _write_outputs(out_dir, result, data, config, data_config, parent, test, reporter, config_hash,
                           averaged is not None, world.size)
        distributed.barrier()  # when any rank returns, best.pt and its manifest are there
        result.checkpoint = out_dir / "best.pt"
    reporter.table("training summary", ["metric", "value"], [
        ["best epoch", best_epoch], ["best val accuracy", f"{best_val:.2%}"],
        ["test accuracy (best-by-val weights)", f"{result.test_accuracy:.2%}"],
        ["wall time (s)", round(result.wall_seconds, 1)],
        ["images/s (last epoch)", round(history[-1]["images_per_second"]) if history else 0],
        ["checkpoint", str(result.checkpoint or "-")],
    ])
    return result


def _same_buffers(model: nn.Module, averager: Any, world: distributed.World) -> None:
    """Rank 0's BN statistics on every rank (DDP keeps the weights equal, each rank updates its own buffers)."""
    if world.distributed:
        distributed.broadcast_buffers(model)
        if averager is not None and averager.averaged is not None:
            distributed.broadcast_buffers(averager.averaged)


def _diverged(loss: float, epoch: int, step: int, config: TrainConfig, state_path: Path | None) -> ConfigError:
    saved = (f"; the last good epoch is in {state_path}" if state_path is not None and state_path.exists()
             else "")
    return ConfigError(f"training diverged: the loss became {loss} in epoch {epoch + 1}, step {step}{saved}",
                       f"the learning rate is likely too high (--lr {config.lr}, batch {config.batch_size}): "
                       "lower it, or pass --grad-clip 1.0")


def _write_outputs(out_dir: Path, result: TrainResult, data: DataSplits, config: TrainConfig,
                   data_config: DataConfig | None, parent: Path | None, test: dict, reporter: Reporter,
                   config_hash: str, swa: bool = False, processes: int = 1) -> Path:
    from .report import plot_confusion, plot_training_curves

    metrics = {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
               "test_accuracy": result.test_accuracy, "test_loss": test["loss"],
               "wall_seconds": result.wall_seconds, "epochs": len(result.history)}
    if swa:  # the kept weights are the SWA mean, not one epoch's
        metrics["kept"] = "swa"
    if processes > 1:
        metrics["processes"] = processes
    checkpoint = out_dir / "best.pt"
    extra = {"data_config": to_plain(data_config) if data_config else None, "data": data.describe(),
             "train_config": to_plain(config), "metrics": metrics}
    staged = staging_path(checkpoint)
    try:  # best.pt and its manifest appear together
        save_checkpoint(staged, result.model, data.classes, extra)
        publish(staged, checkpoint, Manifest(kind="checkpoint", format=SOURCE_FORMAT.name, precision="fp32",
                                             parent=parent_ref(parent), config={"train": config, "data": data_config},
                                             seed=config.seed, metrics=metrics,
                                             extra={"data": data.describe(), "config_hash": config_hash}))
    finally:
        remove_path(staged)
    atomic_write_text(out_dir / "metrics.json", _json({"metrics": metrics, "history": result.history,
                                                       "config": to_plain(config), "data": data.describe()}))
    plot_training_curves(result.history, out_dir / "curves.png")
    confusion = confusion_matrix(test["predictions"], data.test_y, data.num_classes)
    plot_confusion(confusion, data.classes, out_dir / "confusion.png",
                   title=f"test confusion (accuracy {result.test_accuracy:.2%})")
    reporter.info(f"train: wrote {checkpoint}, metrics.json, curves.png, confusion.png in {out_dir}")
    return checkpoint


def _json(value: Any) -> str:
    import json

    return json.dumps(to_plain(value), indent=2) + "\n"
