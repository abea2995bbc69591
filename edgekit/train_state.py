"""The training state in last.pt (what --resume restores) and the check that a resumed run matches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_torch_save, to_plain
from .config import DataConfig, TrainConfig
from .data import DataSplits
from .errors import CheckpointError, ConfigError

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


def save_train_state(path: Path, model, optimizer, scheduler, scaler, averager, generator, epoch, history,
                     best_val, best_epoch, best_state, config_hash, run_config, processes: int = 1) -> None:
    """Everything a resumed run needs to continue bit for bit (written by rank 0 only; every rank reads it)."""
    state = {
        "format": TRAIN_STATE_FORMAT, "epoch": epoch, "config_hash": config_hash, "run_config": run_config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": None,  # the EMA's AveragedModel; SWA's under "swa"
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        "history": history, "best_val": best_val, "best_epoch": best_epoch, "best_model": best_state,
        "processes": processes,
    }
    if averager.key is not None:
        state[averager.key] = averager.state_dict()
    atomic_torch_save(state, path)


def load_train_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {path}: corrupt or truncated",
                              "delete it and start without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not an edgekit training state", "point --out at an edgekit training run")
    return state
