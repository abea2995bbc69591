"""Weight averaging beside the trained weights: EMA (every step) and SWA (one snapshot per epoch).

Both use torch.optim.swa_utils. EMA (`--averaging ema`) keeps an exponential moving average of
weights and BN buffers, updated after every optimizer step, and is what the trainer evaluates
and keeps. SWA (`--averaging swa`, Izmailov et al. 2018) trains normally for `--swa-start`
epochs, then anneals the learning rate to `--swa-lr` over one epoch (SWALR, counted in optimizer
steps) and holds it, taking a snapshot of the weights at the end of every remaining epoch; the
kept model is the equal-weight mean of those snapshots, with BatchNorm statistics recomputed over
the (unaugmented) training images at the end (update_bn), since averaged weights need their own.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from .config import Averaging, TrainConfig


class Averager:
    """No averaging: the trained model is the one evaluated and kept."""

    key: str | None = None  # where a training state (last.pt) keeps this averager's state

    def __init__(self, model: nn.Module, config: TrainConfig, optimizer: torch.optim.Optimizer,
                 steps_per_epoch: int) -> None:
        self.averaged: AveragedModel | None = None

    def start_epoch(self, epoch: int) -> None:
        pass

    def owns_lr(self, epoch: int) -> bool:
        """True where this averager sets the learning rate instead of the run's schedule."""
        return False

    def after_step(self, model: nn.Module, epoch: int) -> None:
        pass

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        pass

    def eval_module(self, model: nn.Module) -> nn.Module:
        return model

    def finish(self, model: nn.Module, train_batches: Iterable[torch.Tensor], device: torch.device) -> nn.Module | None:
        """The averaged module to keep instead of the best-by-validation weights, if any."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass


class EMA(Averager):
    key = "ema"

    def __init__(self, model, config, optimizer, steps_per_epoch) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)

    def after_step(self, model, epoch) -> None:
        self.averaged.update_parameters(model)

    def eval_module(self, model):
        return self.averaged.module

    def state_dict(self):
        return self.averaged.state_dict()

    def load_state_dict(self, state) -> None:
        if state:
            self.averaged.load_state_dict(state)


class SWA(Averager):
    key = "swa"

    def __init__(self, model, config, optimizer, steps_per_epoch) -> None:
        self.averaged = AveragedModel(model)  # equal-weight running mean of the snapshots
        self.optimizer = optimizer
        self.start = config.swa_start_epoch()
        self.lr = config.swa_lr_value()
        self.anneal_steps = max(1, steps_per_epoch)
        self.scheduler: SWALR | None = None

    def start_epoch(self, epoch) -> None:
        if epoch >= self.start and self.scheduler is None:
            self._make_scheduler()

    def _make_scheduler(self) -> None:
        self.scheduler = SWALR(self.optimizer, swa_lr=self.lr, anneal_epochs=self.anneal_steps,
                               anneal_strategy="cos")

    def owns_lr(self, epoch) -> bool:
        return epoch >= self.start

    def after_step(self, model, epoch) -> None:
        if epoch >= self.start:
            self.scheduler.step()

    def after_epoch(self, model, epoch) -> None:
        if epoch >= self.start:
            self.averaged.update_parameters(model)

    def finish(self, model, train_batches, device):
        if int(self.averaged.n_averaged) == 0:
            return None
        update_bn(train_batches, self.averaged, device)
        return self.averaged.module

    def state_dict(self):
        return {"averaged": self.averaged.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state) -> None:
        if not state:
            return
        self.averaged.load_state_dict(state["averaged"])
        if state.get("scheduler") is not None:
            self._make_scheduler()
            self.scheduler.load_state_dict(state["scheduler"])


AVERAGERS = {Averaging.none: Averager, Averaging.ema: EMA, Averaging.swa: SWA}


def make_averager(model: nn.Module, config: TrainConfig, optimizer: torch.optim.Optimizer,
                  steps_per_epoch: int) -> Averager:
    return AVERAGERS[Averaging(config.averaging)](model, config, optimizer, steps_per_epoch)
