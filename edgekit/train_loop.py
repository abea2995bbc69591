"""The pieces of one training run, in the order `train._train` calls them: set up, (resume,) wrap
for stepping, train an epoch step by step, evaluate it, keep the SWA mean, release the model.

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
from .artifacts import cpu_flags
from .averaging import Averager, make_averager
from .config import Device, Optimizer, Schedule, TrainConfig
from .data import DataSplits, augment, batches, to_unit_float
from .errors import ConfigError, DataError, DependencyError
from .measure import evaluate
from .report import Reporter


@dataclass
class Progress:
    """How far a run got: its epochs' records and the best of them so far."""
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # the kept weights, on the CPU
    epochs_done: int = 0

    def add(self, record: dict[str, Any], kept: nn.Module) -> None:
        """The record of the epoch just finished; `kept` (the model or its EMA) is its best if it beats the others."""
        self.history.append(record)
        self.epochs_done = record["epoch"]
        if record["val_accuracy"] > self.best_val:
            self.best_val, self.best_epoch = record["val_accuracy"], record["epoch"]
            self.best_state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}


# ---- the recipe -----------------------------------------------------------------------------------


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


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean."""
    log_student = nn.functional.log_softmax(student_logits / temperature, dim=1)
    log_teacher = nn.functional.log_softmax(teacher_logits / temperature, dim=1)
    return nn.functional.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature ** 2


# ---- setting up -----------------------------------------------------------------------------------


@dataclass
class Run:
    """What a run trains with, made once by `set_up`; the steps change the tensors inside, not these fields
    (`start_stepping` adds the wrapped model the steps call)."""
    config: TrainConfig
    world: distributed.World
    device: torch.device
    model: nn.Module
    teacher: nn.Module | None  # only when distilling
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: Any  # a torch.autocast, entered for every forward pass
    scaler: torch.amp.GradScaler | None  # fp16 only
    precision: str
    averager: Averager
    criterion: nn.Module
    generator: torch.Generator  # every random number of the run's batches and augmentation
    train_x: torch.Tensor
    train_y: torch.Tensor
    cutout_fill: float | tuple[float, ...]
    batch_size: int  # one optimizer step over all processes and micro-batches
    micro: int  # one forward pass of one process
    steps_per_epoch: int
    started: float
    ddp_model: nn.Module | None = None
    step_model: nn.Module | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    @property
    def eval_model(self) -> nn.Module:
        """What each epoch evaluates and keeps as its best: the EMA where there is one, else the model."""
        return self.averager.eval_module(self.model)


def _check_data(data: DataSplits) -> None:
    if data.num_classes < 2:
        raise DataError(f"the data has {data.num_classes} class ({', '.join(data.classes)}); training needs at least two",
                        "add a second class folder (train/<class>/ and test/<class>/)")
    if len(data.train_y) == 0:
        raise ConfigError("the training split is empty", "use more data or a smaller --val-size")


def _batch_sizes(config: TrainConfig, world: distributed.World, images: int) -> tuple[int, int, int]:
    """(global batch, micro-batch, steps per epoch): one optimizer step = one global batch, world size x
    accumulate micro-batches of `micro` images."""
    parts = world.size * config.accumulate
    distributed.check_batch(config.batch_size, world.size, config.accumulate)
    if images < parts:
        raise ConfigError(f"the training split has {images} images, fewer than the {parts} micro-batches "
                          "of one step", "use more data, fewer processes or a smaller --accumulate")
    batch_size = min(config.batch_size, images // parts * parts)
    return batch_size, batch_size // parts, images // batch_size


def set_up(model: nn.Module, data: DataSplits, config: TrainConfig, teacher: nn.Module | None,
           world: distributed.World) -> Run:
    """Seed, place the model (and teacher) on the device, and make the optimizer, schedule, autocast and averager."""
    _check_data(data)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = distributed.device_for(resolve_device(config.device), world)
    started = time.perf_counter()

    model.to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if config.sync_bn:
        distributed.to_sync_batchnorm(model, device, world)
    optimizer = _optimizer(model, config)
    batch_size, micro, steps_per_epoch = _batch_sizes(config, world, len(data.train_y))
    total_steps = steps_per_epoch * config.epochs
    warmup = config.warmup_steps(steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, config.schedule, config.warmup_start))
    autocast, scaler, precision = _autocast(device, config)
    averager = make_averager(model, config, optimizer, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if teacher is not None and config.distill_alpha > 0:
        teacher.to(device).to(memory_format=memory_format).eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
    else:
        teacher = None
    generator = torch.Generator().manual_seed(config.seed)
    # Cutout fills with the training images' mean colour (about 0 after normalization), as in
    # DeVries & Taylor and the airbench baselines.
    cutout_fill = tuple((data.train_x.double().mean((0, 2, 3)) / 255).tolist()) if config.cutout else 0.0
    return Run(config=config, world=world, device=device, model=model, teacher=teacher, optimizer=optimizer,
               scheduler=scheduler, autocast=autocast, scaler=scaler, precision=precision, averager=averager,
               criterion=criterion, generator=generator, train_x=data.train_x.to(device),
               train_y=data.train_y.to(device), cutout_fill=cutout_fill, batch_size=batch_size, micro=micro,
               steps_per_epoch=steps_per_epoch, started=started)


def start_stepping(run: Run) -> None:
    """The module the steps call: DDP (which broadcasts rank 0's weights here, so after a resume loaded
    them), compiled when asked."""
    run.ddp_model = distributed.wrap(run.model, run.device, run.world)
    run.step_model = torch.compile(run.ddp_model) if run.config.compile else run.ddp_model


# ---- one epoch, one step --------------------------------------------------------------------------


@dataclass
class EpochTotals:
    started: float
    seen: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


def train_epoch(run: Run, epoch: int, reporter: Reporter, logger: Any, state_path: Path | None) -> EpochTotals:
    """One pass over the training split, a progress bar advancing (and a TensorBoard step logged) per step."""
    run.model.train()
    run.averager.start_epoch(epoch)
    totals = EpochTotals(started=time.perf_counter())
    with reporter.progress(f"epoch {epoch + 1}/{run.config.epochs}", total=run.steps_per_epoch) as bar:
        for x, y in batches(run.train_x, run.train_y, run.batch_size, run.generator, drop_last=True):
            step_loss, step_correct = train_step(run, x, y, epoch)
            if not math.isfinite(step_loss):
                raise _diverged(step_loss, epoch, totals.seen // run.batch_size + 1, run.config, state_path)
            totals.seen += run.batch_size
            totals.loss_sum += step_loss * run.batch_size
            totals.correct += step_correct
            images_per_second = totals.seen / max(time.perf_counter() - totals.started, 1e-9)
            bar.advance(1, loss=totals.loss_sum / totals.seen, acc=totals.correct / totals.seen,
                        img_s=images_per_second)
            if logger is not None:
                logger.step(step_loss, step_correct / run.batch_size, run.optimizer.param_groups[0]["lr"],
                            images_per_second)
    totals.seconds = time.perf_counter() - totals.started
    return totals


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[float, int]:
    """One optimizer step on one global batch; its mean loss and its hits, the same on every rank."""
    # The whole global batch is augmented on every rank (the same random numbers), then each
    # keeps its slice: N processes see exactly the images and crops one process would.
    x = augment(to_unit_float(x), run.generator, cutout=run.config.cutout, cutout_fill=run.cutout_fill)
    x, y = distributed.shard(x, run.world), distributed.shard(y, run.world)
    x = x.contiguous(memory_format=run.memory_format)
    run.optimizer.zero_grad(set_to_none=True)
    step_loss, step_correct = 0.0, 0
    for k, (x_k, y_k) in enumerate(zip(x.split(run.micro), y.split(run.micro))):
        loss, logits = _forward_backward(run, x_k, y_k, last=k == run.config.accumulate - 1)
        # .item() syncs with the GPU; once per micro-batch is cheap next to a ResNet18 step.
        step_loss += loss.item() * len(y_k)
        step_correct += (logits.argmax(1) == y_k).sum().item()
    if run.world.distributed:  # the global batch's loss and hits, the same on every rank
        step_loss, step_correct = distributed.sum_across([step_loss, step_correct], run.device)
    _optimizer_step(run, epoch)
    return step_loss / run.batch_size, int(step_correct)


def _forward_backward(run: Run, x: torch.Tensor, y: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward under autocast, backward of its share of the step's loss; (loss, logits)."""
    # Gradients are all-reduced once per step, on the last micro-batch.
    with contextlib.nullcontext() if last or not run.world.distributed else run.ddp_model.no_sync():
        with run.autocast:
            logits = run.step_model(x)
            loss = _loss(run, logits, x, y)
        # The mean over the step's images: each micro-batch's mean / accumulate (DDP averages ranks).
        scaled = loss / run.config.accumulate
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    return loss, logits


def _loss(run: Run, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The label loss, mixed with distillation from the teacher's logits on the same images when there is one."""
    loss = run.criterion(logits.float(), y)
    if run.teacher is None:
        return loss
    with torch.no_grad():
        teacher_logits = run.teacher(x).float()
    alpha = run.config.distill_alpha
    return (1 - alpha) * loss + alpha * distillation_loss(logits.float(), teacher_logits,
                                                          run.config.distill_temperature)


def _optimizer_step(run: Run, epoch: int) -> None:
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    if run.config.grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    if not run.averager.owns_lr(epoch):  # SWA anneals and holds its own rate
        run.scheduler.step()
    run.averager.after_step(run.model, epoch)


def _diverged(loss: float, epoch: int, step: int, config: TrainConfig, state_path: Path | None) -> ConfigError:
    saved = (f"; the last good epoch is in {state_path}" if state_path is not None and state_path.exists()
             else "")
    return ConfigError(f"training diverged: the loss became {loss} in epoch {epoch + 1}, step {step}{saved}",
                       f"the learning rate is likely too high (--lr {config.lr}, batch {config.batch_size}): "
                       "lower it, or pass --grad-clip 1.0")


# ---- end of an epoch, end of the run --------------------------------------------------------------


def evaluate_epoch(run: Run, data: DataSplits, epoch: int, totals: EpochTotals) -> dict[str, Any]:
    """The epoch's record: its training totals and the accuracies of what it would keep (after averaging).

    Rank 0 evaluates; the others get its numbers, so all pick the same best epoch. The accuracies
    run under the training autocast; the final test of the kept weights is fp32."""
    config, world = run.config, run.world
    run.averager.after_epoch(run.model, epoch)
    _same_buffers(run.model, run.averager, world)  # every rank keeps rank 0's BN statistics
    record = None
    if world.is_main:
        val = evaluate(run.eval_model, data.val_x, data.val_y, config.eval_batch_size, run.device,
                       config.channels_last, run.autocast)
        test = evaluate(run.eval_model, data.test_x, data.test_y, config.eval_batch_size, run.device,
                        config.channels_last, run.autocast)
        seen = max(totals.seen, 1)
        record = {"epoch": epoch + 1, "train_loss": totals.loss_sum / seen,
                  "train_accuracy": totals.correct / seen, "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
                  "lr": run.optimizer.param_groups[0]["lr"],
                  "images_per_second": totals.seen / max(totals.seconds, 1e-9),
                  "epoch_seconds": totals.seconds, "elapsed_seconds": time.perf_counter() - run.started,
                  "eval_precision": run.precision}
        if world.distributed:
            record["processes"] = world.size
    return distributed.broadcast_object(record)


def keep_average(run: Run, data: DataSplits, progress: Progress, reporter: Reporter) -> bool:
    """SWA keeps the mean of its snapshots, with BN statistics of its own, instead of the best epoch: True if so."""
    config = run.config
    averaged = run.averager.finish(run.model, (to_unit_float(x).contiguous(memory_format=run.memory_format)
                                               for x, _ in batches(run.train_x, run.train_y, config.eval_batch_size)),
                                   run.device)
    if averaged is None:
        return False
    _same_buffers(averaged, None, run.world)
    val = evaluate(averaged, data.val_x, data.val_y, config.eval_batch_size, run.device, config.channels_last,
                   run.autocast) if run.world.is_main else None
    progress.best_val = distributed.broadcast_object(val["accuracy"] if val else None)
    progress.best_epoch = len(progress.history)
    progress.best_state = {k: v.detach().cpu().clone() for k, v in averaged.state_dict().items()}
    reporter.info(f"train: kept the SWA mean of {int(run.averager.averaged.n_averaged)} snapshots "
                  f"(val {progress.best_val:.2%})")
    return True


def release(run: Run) -> None:
    """The model (and teacher) back on the CPU as plain contiguous modules, as checkpoints and exports expect."""
    if run.config.sync_bn:
        distributed.from_sync_batchnorm(run.model)
    run.model.to("cpu").to(memory_format=torch.contiguous_format)
    if run.teacher is not None:
        run.teacher.to("cpu").to(memory_format=torch.contiguous_format)


def _same_buffers(model: nn.Module, averager: Averager | None, world: distributed.World) -> None:
    """Rank 0's BN statistics on every rank (DDP keeps the weights equal, each rank updates its own buffers)."""
    if world.distributed:
        distributed.broadcast_buffers(model)
        if averager is not None and averager.averaged is not None:
            distributed.broadcast_buffers(averager.averaged)
