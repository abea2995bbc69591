"""TensorBoard scalars for the trainer (`--tensorboard DIR`): the optional `tensorboard` extra.

One logger per log folder and process, shared by every `train_model` call that names the folder,
so a prune with several fine-tune rounds or a QAT run in two phases writes one continuous curve:
the logger counts steps and epochs itself. Scalars are flushed at every epoch's end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import missing_dependency


class TrainingLogger:
    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's wrapper needs the tensorboard package for its event-file writer
            raise missing_dependency("tensorboard", "tensorboard", "--tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.steps = 0
        self.epochs = 0

    def skip(self, steps: int, epochs: int) -> None:
        """A resumed run continues its curves where the interrupted one stopped."""
        self.steps, self.epochs = max(self.steps, steps), max(self.epochs, epochs)

    def step(self, loss: float, accuracy: float, lr: float, images_per_second: float) -> None:
        self.steps += 1
        for tag, value in (("loss", loss), ("accuracy", accuracy), ("lr", lr), ("images_per_s", images_per_second)):
            self.writer.add_scalar(f"step/{tag}", value, self.steps)

    def epoch(self, record: dict[str, Any]) -> None:
        self.epochs += 1
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy", "lr",
                    "images_per_second"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], self.epochs)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


_LOGGERS: dict[str, TrainingLogger] = {}


def shared_logger(log_dir: str | Path) -> TrainingLogger:
    """The logger of `log_dir` in this process (made on first use)."""
    key = str(Path(log_dir).resolve())
    if key not in _LOGGERS:
        _LOGGERS[key] = TrainingLogger(log_dir)
    return _LOGGERS[key]
