"""A fine-tune's scratch folder: where its epochs wait, beside the output, until the output is written.

A full-width fine-tune is hours on a CPU. `edgekit prune`, `control` and `quantize --mode qat` keep every epoch's
training state and every finished cycle in OUT.finetune/, made for one job (the source file's
sha256, the recipe, the data), so the same command after an interruption goes on from the last
finished epoch; what another job left there is discarded, not continued.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import distributed
from .artifacts import atomic_torch_save, atomic_write_text, remove_path, to_plain
from .report import Reporter, quiet

SCRATCH_SUFFIX = ".finetune"  # artifacts/pruned.pt -> artifacts/pruned.pt.finetune/ while it trains
CYCLE_FORMAT = "edgekit-finetune-cycle/1"


def scratch_dir(out: Path) -> Path:
    """Where the fine-tune of the job writing `out` keeps its epochs until `out` is written."""
    out = Path(out)
    return out.with_name(out.name + SCRATCH_SUFFIX)


def open_scratch(folder: Path, job: dict[str, Any], reporter: Reporter = quiet) -> Path:
    """`folder`, made for `job` (plain data naming the source file's sha256, the recipe and the data):
    what an interrupted run of the same job left there is continued; what another job left (another
    source, recipe or data) is discarded, since continuing it would train other weights.

    Under torchrun rank 0 keeps or clears the folder and every rank returns once it has, so all of
    them read the same epochs (the folder must be on storage they share, as `train --resume` needs;
    the caller has joined the process group)."""
    if distributed.from_env().is_main:
        _keep_or_clear(Path(folder), json.loads(json.dumps(to_plain(job), sort_keys=True)), reporter)
    distributed.barrier()
    return Path(folder)


def _keep_or_clear(folder: Path, job: dict[str, Any], reporter: Reporter) -> None:
    job_file = folder / "job.json"
    if folder.exists():
        try:
            recorded = json.loads(job_file.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded == job:
            return
        reporter.info(f"fine-tune: {folder} holds an interrupted fine-tune of another source or recipe; "
                      "starting afresh")
        remove_path(folder)
    folder.mkdir(parents=True)
    atomic_write_text(job_file, json.dumps(job, sort_keys=True, indent=1) + "\n")


def cycle_state(scratch: Path, index: int) -> Path:
    """Where cycle `index` keeps its training state after each epoch (train_model's state_path)."""
    return Path(scratch) / f"cycle{index}.last.pt"


def save_cycle(scratch: Path, index: int, model: nn.Module, **values: Any) -> None:
    """Cycle `index` finished: its weights (and what the caller records of it) replace its epochs."""
    if not distributed.from_env().is_main:
        return
    atomic_torch_save({"format": CYCLE_FORMAT, **values,
                       "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
                      Path(scratch) / f"cycle{index}.done.pt")
    remove_path(cycle_state(scratch, index))


def finished_cycle(scratch: Path, index: int, reporter: Reporter = quiet) -> dict[str, Any] | None:
    """What save_cycle kept of cycle `index`, or None when it did not finish (or its file is damaged:
    the cycle is then trained again)."""
    path = Path(scratch) / f"cycle{index}.done.pt"
    if not path.exists():
        return None
    try:
        finished = torch.load(path, map_location="cpu", weights_only=True)
        if finished.get("format") == CYCLE_FORMAT:
            return finished
    except Exception:  # a file cut short by the interruption itself
        pass
    reporter.info(f"fine-tune: {path} cannot be read; training that cycle again")
    return None


def kept_or_trained(scratch: Path | None, index: int, cycles: int, model: nn.Module,
                    train: Callable[[Path | None, bool], dict[str, Any]], reporter: Reporter = quiet,
                    label: str = "fine-tune:") -> dict[str, Any]:
    """Cycle `index` of `cycles`: the finished cycle's weights (and record) read back from `scratch`
    into `model`, or else `train(state_path, resume)` run, going on from the cycle's last epoch when
    there is one, and its record kept with the weights. Without `scratch` it just trains."""
    if scratch is None:
        return train(None, False)
    finished = finished_cycle(scratch, index, reporter)
    if finished is not None:
        model.load_state_dict(finished["model"])
        reporter.info(f"{label} cycle {index + 1}/{cycles} finished before an interruption; "
                      f"its weights kept from {scratch}")
        return finished
    state = cycle_state(scratch, index)
    record = train(state, state.exists())
    save_cycle(scratch, index, model, **record)
    return record
