"""PyTorch eager: the source format. Runs edgekit checkpoints (fp32, pruned) on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model import load_checkpoint


def unavailable_reason() -> str | None:
    return None


class TorchRunner:
    name = "torch-eager"

    def __init__(self, model: torch.nn.Module, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()


def load_runner(path: Path, threads: int | None = None) -> TorchRunner:
    return TorchRunner(load_checkpoint(path).build(), threads)


def census(path: Path) -> dict:
    """Parameters of the checkpoint counted by dtype."""
    counts: dict[str, int] = {}
    for tensor in load_checkpoint(path).state_dict.values():
        key = str(tensor.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + tensor.numel()
    return {"weights_by_dtype": counts}
