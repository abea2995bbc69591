"""PyTorch eager: the source format. Runs edgekit checkpoints (fp32, pruned) and the int8
models written by `edgekit quantize` (rebuilt by edgekit.qmodel from tensors and a recipe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model import load_checkpoint
from ..qmodel import is_quantized_artifact, load_quantized


def unavailable_reason() -> str | None:
    return None


class TorchRunner:
    def __init__(self, model: torch.nn.Module, threads: int | None = None, name: str = "torch-eager") -> None:
        self.name = name
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()


def load_runner(path: Path, threads: int | None = None) -> TorchRunner:
    if is_quantized_artifact(path):
        return TorchRunner(load_quantized(path)[0], threads, name="torch-int8")
    return TorchRunner(load_checkpoint(path).build(), threads)


def census(path: Path) -> dict:
    """Weights counted by dtype, read from the file (int8 models are counted after their rebuild)."""
    counts: dict[str, int] = {}
    if is_quantized_artifact(path):
        tensors = load_quantized(path)[0].state_dict().values()
    else:
        tensors = load_checkpoint(path).state_dict.values()
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        key = str(tensor.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + tensor.numel()
    return {"weights_by_dtype": counts}
