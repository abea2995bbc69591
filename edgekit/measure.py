"""Accuracy and latency of a torch model: the one place train, prune, quantize and the benchmark
scripts measure them; and its BN statistics, re-measured on training images.

Latency goes through edgekit.timing (the one timing loop and its percentile rule); models compared
with each other (a parent and its pruned or int8 child) are timed in alternating rounds, so drift on
a shared machine lands on both alike.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .data import DataSplits, batches, to_unit_float
from .model import ModelSpec
from .timing import percentiles, time_interleaved

EVAL_BATCH = 500  # images per forward pass when scoring a split (memory, not accuracy)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024,
             device: torch.device | str = "cpu", channels_last: bool = False, autocast=None) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of `model` on uint8 images; predictions on the CPU.

    `autocast` (a torch.autocast context) runs the forward passes in lower precision: the trainer's
    per-epoch evaluation uses its own, which at full width on a CPU costs a third of fp32's time."""
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    # Fake-quant observers keep recording in eval mode; evaluation data must not move QAT ranges.
    observing = [m for m in model.modules() if getattr(m, "observer_enabled", None) is not None]
    observer_states = [m.observer_enabled.clone() for m in observing]
    for module in observing:
        module.observer_enabled.zero_()
    loss_sum, predictions = 0.0, []
    for x, y in batches(images, labels, batch_size):
        x = to_unit_float(x.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x).float()
        y = y.to(device)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
    model.train(was_training)
    for module, enabled in zip(observing, observer_states):
        module.observer_enabled.copy_(enabled)
    predicted = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
    n = max(1, len(labels))
    return {"accuracy": (predicted == labels.cpu()).float().mean().item() if len(labels) else 0.0,
            "loss": loss_sum / n, "predictions": predicted}


def accuracy(model: nn.Module, data: DataSplits, split: str = "val") -> float:
    images, labels = (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)
    return evaluate(model, images, labels, batch_size=EVAL_BATCH)["accuracy"]


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` for the block, the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def compare_latency(models: dict[str, nn.Module], threads: int = 1, runs: int = 200, warmup: int = 20,
                    rounds: int = 5, batch: int = 1, input_shape: tuple[int, ...] = ModelSpec().input_shape
                    ) -> dict[str, dict[str, Any]]:
    """CPU batch-`batch` latency of torch eager for each model, threads pinned, in milliseconds
    (edgekit.timing's rule over all timed calls), the models timed in `rounds` alternating rounds."""
    x = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    for model in models.values():
        model.eval()
    with torch_threads(threads), torch.inference_mode():
        samples = time_interleaved({name: (lambda _, m=model: m(x)) for name, model in models.items()},
                                   runs, warmup, rounds)
    result = {}
    for name, times in samples.items():
        stats = percentiles(times)
        result[name] = {"p50_ms": stats["p50"], "p90_ms": stats["p90"], "mean_ms": stats["mean"],
                        "runs": stats["runs"], "rounds": rounds if len(models) > 1 else 1, "threads": threads,
                        "batch": batch, "runtime": "torch eager (CPU)"
                        + (", models timed in alternating rounds" if len(models) > 1 else "")}
    return result


def measure_latency(model: nn.Module, threads: int = 1, runs: int = 200, warmup: int = 20,
                    batch: int = 1) -> dict[str, Any]:
    """compare_latency for one model."""
    return compare_latency({"model": model}, threads, runs, warmup, rounds=1, batch=batch)["model"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: DataSplits, num_batches: int = 20, batch_size: int = 256,
                   seed: int = 0) -> None:
    """Re-estimate BN running statistics after pruning changed what each BN sees.

    Running stats are reset and re-accumulated as a plain average (momentum None) over
    un-augmented training batches, in train mode under no_grad, so no weight moves.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for index, (x, _) in enumerate(batches(data.train_x, data.train_y, batch_size, generator)):
        if index >= num_batches:
            break
        model(to_unit_float(x))
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)
