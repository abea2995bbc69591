"""PyTorch eager: the source format. Runs edgekit checkpoints (fp32, pruned) and the int8
models written by `edgekit quantize` (rebuilt by edgekit.qmodel from tensors and a recipe).

An int8 model runs under the quantized engine its file was made for (x86/fbgemm or qnnpack),
read from the file's recipe, never from torch's global default: the runner selects it for every
call and restores the previous one, so files of different engines can share one process (a
bench). Its `engine` and `notes` say which engine ran, and when that engine's kernels are not
this machine's (qnnpack on x86), that its latency here is not the target's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..qengine import artifact_engine, engine_latency_note, quantized_engine
from .source import SourceFile, as_source


def unavailable_reason() -> str | None:
    return None


class TorchRunner:
    def __init__(self, model: torch.nn.Module, threads: int | None = None, name: str = "torch-eager",
                 engine: str | None = None) -> None:
        self.name = name
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.engine = engine  # the quantized engine of an int8 model; None for a float one
        note = engine_latency_note(engine) if engine else None
        self.notes = [note] if note else []

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        with quantized_engine(self.engine):
            return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()


def load_runner(path: Path | SourceFile, threads: int | None = None) -> TorchRunner:
    """The runner of a torch file; an export passes the SourceFile it has read, so the file is not read again."""
    source = as_source(path)
    if source.is_int8:
        model, payload = source.quantized  # loaded (weights packed) under the file's own engine
        engine = artifact_engine(payload["recipe"]).value
        return TorchRunner(model, threads, name=f"torch-int8 ({engine})", engine=engine)
    return TorchRunner(source.float_checkpoint.build(), threads)


def census(path: Path) -> dict:
    """Weights counted by dtype, read from the file (int8 models are counted after their rebuild)."""
    counts: dict[str, int] = {}
    source = as_source(path)
    if source.is_int8:
        tensors = source.quantized[0].state_dict().values()
    else:
        tensors = source.float_checkpoint.state_dict.values()
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        key = str(tensor.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + tensor.numel()
    return {"weights_by_dtype": counts}


def check_file(path: Path) -> None:
    """The payload reads and names a model shape (float checkpoint or int8 file alike), without building it."""
    from ..qmodel import torch_artifact_spec

    torch_artifact_spec(path)
