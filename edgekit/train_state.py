"""The training state in last.pt (what every epoch's end writes and --resume restores) and the check
that a resumed run matches the interrupted one. How far a run got (Progress) is the loop's, in train_loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_torch_save, to_plain
from .config import DataConfig, TrainConfig
from .data import DataSplits
from .errors import CheckpointError, ConfigError
from .report import Reporter

from .train_loop import Progress, Run

TRAIN_STATE_FORMAT = "edgekit-train-state/1"


def run_config_of(config: TrainConfig, data_config: DataConfig, data: DataSplits) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one, as plain JSON data."""
    return {"train": to_plain(config), "data": to_plain(data_config), "data_fingerprint": data.fingerprint}


def check_resume_config(state: dict[str, Any], run_config: dict[str, Any], config_hash: str) -> None:
    from .config import resume_mismatches

    recorded = state.get("run_config")
    if recorded is None:  # a state written before run configs were recorded: only the exact hash will do
        mismatched = [] if state["config_hash"] == config_hash else ["(config hash)"]
    else:
        mismatched = [f"train.{name}" for name in resume_mismatches(
            recorded["train"], run_config["train"], to_plain(TrainConfig()))]
        mismatched += [f"data.{name}" for name in resume_mismatches(
            recorded["data"], run_config["data"], to_plain(DataConfig()))]
        if recorded.get("data_fingerprint") != run_config["data_fingerprint"]:
            mismatched.append("data (the decoded images differ)")
    if mismatched:
        raise ConfigError(f"--resume with a different config than the interrupted run: {', '.join(mismatched)}",
                          "resume with the same options, or start a fresh run in another --out")


@dataclass(frozen=True)
class StateFile:
    """A run's last.pt (`path` None without an --out folder), with the settings a resumed run must share."""
    path: Path | None
    run_config: dict[str, Any]
    config_hash: str

    def save(self, run: Run, progress: Progress) -> None:
        """Everything a resumed run needs to continue bit for bit (written by rank 0 only; every rank reads it)."""
        if self.path is None or not run.world.is_main:
            return
        state = {
            "format": TRAIN_STATE_FORMAT, "epoch": progress.epochs_done, "config_hash": self.config_hash,
            "run_config": self.run_config,
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "ema": None,  # the EMA's AveragedModel; SWA's under "swa"
            "generator": run.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "history": progress.history, "best_val": progress.best_val, "best_epoch": progress.best_epoch,
            "best_model": progress.best_state, "processes": run.world.size,
        }
        if run.averager.key is not None:
            state[run.averager.key] = run.averager.state_dict()
        atomic_torch_save(state, self.path)

    def resume(self, run: Run, reporter: Reporter) -> Progress:
        """Load the interrupted run's state into `run` (on every rank: optimizer, RNG and generator states
        included) and return how far it got."""
        if self.path is None or not self.path.exists():
            raise CheckpointError(f"nothing to resume: {self.path} does not exist",
                                  "start without --resume, or point --out at the interrupted run")
        state = load_train_state(self.path)
        check_resume_config(state, self.run_config, self.config_hash)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        if run.averager.key is not None:
            run.averager.load_state_dict(state.get(run.averager.key))
        run.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        progress = Progress(history=state["history"], best_val=state["best_val"], best_epoch=state["best_epoch"],
                            best_state=state["best_model"], epochs_done=state["epoch"])
        reporter.info(f"train: resumed from {self.path} after epoch {progress.epochs_done}")
        if state.get("processes", 1) != run.world.size:  # BatchNorm sees another slice size from here on
            reporter.info(f"train: the interrupted run had {state.get('processes', 1)} process(es), this one "
                          f"{run.world.size}")
        return progress


def load_train_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {path}: corrupt or truncated",
                              "delete it and start without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not an edgekit training state", "point --out at an edgekit training run")
    return state
