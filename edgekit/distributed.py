"""Data-parallel training across processes (`torchrun`): who this process is, and the few collectives used.

`torchrun --nproc-per-node=N -m edgekit.cli train ...` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK in their environment; `setup` joins them into one process group (NCCL
on CUDA, gloo on CPU). Without those variables everything here is a no-op for one process, so a
plain `edgekit train` is untouched.

How the work is split, so that N processes reach the weights one process would: every rank holds
the whole training set and draws the same seeded permutation and augmentation for each global
batch, then keeps its own contiguous slice of it (`shard`); DDP averages the gradients, which is
the mean over the global batch. Only BatchNorm differs: each rank normalizes over its own slice
(`--sync-bn` makes the statistics global, on GPUs). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def from_env() -> World:
    """The process's place as torchrun announces it (one process when it does not)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.strip().isdigit() else default

    return World(rank=read("RANK", 0), size=max(1, read("WORLD_SIZE", 1)), local_rank=read("LOCAL_RANK", 0))


def current() -> World:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), from_env().local_rank)
    return from_env()


def setup(device_type: str) -> World:
    """Join the process group torchrun set up the environment for (idempotent); NCCL on CUDA, gloo on CPU."""
    world = from_env()
    if not world.distributed or torch.distributed.is_initialized():
        return current()
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    torch.distributed.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return current()


def setup_for_default_device() -> World:
    """`setup` for the device a fine-tune picks by default (--device auto): CUDA when there is a GPU."""
    return setup("cuda" if torch.cuda.is_available() else "cpu")


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def device_for(device: torch.device, world: World) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK); the CPU is shared."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def check_batch(batch_size: int, world_size: int, accumulate: int = 1) -> int:
    """The micro-batch each rank runs: batch / (world size x accumulate), refused unless it divides evenly."""
    parts = world_size * accumulate
    if batch_size % parts:
        lower, upper = batch_size - batch_size % parts, batch_size - batch_size % parts + parts
        suggestion = f"e.g. --batch-size {upper}" + (f" or {lower}" if lower else "")
        raise ConfigError(f"--batch-size {batch_size} does not split evenly over {world_size} process(es) x "
                          f"--accumulate {accumulate}: the global batch must be a multiple of {parts}",
                          f"pass a --batch-size that is a multiple of {parts} ({suggestion}), or change the "
                          "number of processes or --accumulate")
    return batch_size // parts


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the ranks' slices are disjoint and cover it)."""
    local = len(batch) // world.size
    return batch[world.rank * local:(world.rank + 1) * local]


def barrier() -> None:
    if current().distributed:
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may write a cache); the others run it after, reading what it wrote."""
    world = current()
    if world.distributed and not world.is_main:
        barrier()
    yield
    if world.distributed and world.is_main:
        barrier()


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (the values themselves in one process)."""
    if not current().distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not current().distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) copied into every rank's module; DDP keeps the weights equal."""
    if not current().distributed:
        return
    for tensor in module.buffers():
        torch.distributed.broadcast(tensor.data, src=0)


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """The module the training step calls: DDP over the process group, or the model itself."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # DDP's default copies rank 0's buffers (BN statistics) to every rank before each forward.
    return DistributedDataParallel(model, device_ids=device_ids)


def check_sync_bn(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on the CPU",
                          "drop --sync-bn (each process then normalizes over its own slice of the batch)")


def to_sync_batchnorm(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """BatchNorm statistics over the global batch, in place (torch's SyncBatchNorm runs on GPUs only).

    One process has nothing to synchronize with: the model is left as it is."""
    check_sync_bn(device)
    if not world.distributed:
        return model
    for name, child in model.named_children():
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return model


def from_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Plain BatchNorm2d again, same parameters and statistics, so checkpoints and exports see a normal ResNet18."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=module.weight.device if module.affine else None)
        plain.load_state_dict(module.state_dict())
        plain.train(module.training)
        if module.affine:  # keep the very Parameter objects, which the optimizer holds
            plain.weight, plain.bias = module.weight, module.bias
        return plain
    for name, child in module.named_children():
        setattr(module, name, from_sync_batchnorm(child))
    return module
