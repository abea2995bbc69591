"""One process of a test's multi-process run: `python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py MODE ...`.

MODE `cli`: the rest of the arguments go to `edgekit` itself (the command a user runs under torchrun).
MODE `smooth`: `train_model` on tiny synthetic data with `smooth_resnet` (see there), where the
batch split cannot change the maths; arguments: OUT SEED.

On every rank a Python audit hook records every file the process opens for writing, creates,
renames or removes under $EDGEKIT_TEST_WATCH; the list is written at exit to
$EDGEKIT_TEST_REPORTS/writes-<rank>.json (a file per rank: two ranks' long lines on one pipe interleave) (rank 0's shows that the hook sees the trainer's writes). $EDGEKIT_TEST_STOP_BEFORE_EPOCH=N stands in for Ctrl-C
on every rank as epoch N starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink", "os.link",
                "os.chmod", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}


def watch_writes(root: str) -> list[str]:
    root = os.path.realpath(root)
    seen: list[str] = []

    def under(path) -> bool:
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        return isinstance(path, str) and os.path.realpath(path).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and under(path):
                seen.append(f"open {path}")
        elif event in WRITE_EVENTS and args and (under(args[0]) or (len(args) > 1 and under(args[1]))):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def stop_before_epoch(epoch: int) -> None:
    from edgekit import report

    for cls in (report.Reporter, report.RichReporter):
        original = cls.progress

        def progress(self, description, total=None, _original=original):
            if description.startswith(f"epoch {epoch}/"):
                raise KeyboardInterrupt
            return _original(self, description, total)

        cls.progress = progress


def smooth_resnet(width: float, num_classes: int, seed: int) -> nn.Module:
    """edgekit's ResNet18 with GroupNorm for BatchNorm and SiLU for ReLU.

    GroupNorm normalizes each image on its own, so splitting a batch over processes or micro-batches
    leaves the maths unchanged. SiLU because ReLU's kink makes the gradient discontinuous in the
    weights: a float rounding difference of 1e-7 flips a few activations and the runs drift apart
    ~100x per step (measured here: 6e-4 after 4 steps); with SiLU they stay at ~3e-7 over 14 steps.
    """
    from edgekit.model import ModelSpec, build_model

    model = build_model(ModelSpec.from_width(width, num_classes), seed=seed)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(min(4, child.num_features), child.num_features))
            elif isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
            else:
                swap(child)

    swap(model)
    return model


def tiny_setup():
    from edgekit.config import DataConfig, DataSource, TrainConfig

    data_config = DataConfig(source=DataSource.synthetic, synthetic_train=600, synthetic_test=200, val_size=100)
    train_config = TrainConfig(epochs=2, batch_size=64, lr=0.05, width=0.125, warmup_epochs=0.5, cutout=4,
                               threads=1)
    return data_config, train_config


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    writes = watch_writes(os.environ["EDGEKIT_TEST_WATCH"])
    if os.environ.get("EDGEKIT_TEST_STOP_BEFORE_EPOCH"):
        stop_before_epoch(int(os.environ["EDGEKIT_TEST_STOP_BEFORE_EPOCH"]))
    code = 0
    try:
        if mode == "cli":
            from edgekit.cli import app

            try:
                app(args=args, prog_name="edgekit")
            except SystemExit as exit_:
                code = exit_.code or 0
        else:
            from edgekit.data import load_data
            from edgekit.train import train_model

            data_config, train_config = tiny_setup()
            data = load_data(data_config)
            model = smooth_resnet(train_config.width, data.num_classes, int(args[1]))
            train_model(model, data, train_config, args[0], data_config=data_config)
            from edgekit.distributed import shutdown

            shutdown()
    finally:
        report = json.dumps(writes)  # before the report's own write joins the list
        Path(os.environ["EDGEKIT_TEST_REPORTS"], f"writes-{rank}.json").write_text(report)
    return code


if __name__ == "__main__":
    sys.exit(main())
