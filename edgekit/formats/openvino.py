"""OpenVINO: a second CPU runtime for ONNX files (listed under the onnx entry of the format table).

It reads the very .onnx file ONNX Runtime runs, so it has no exporter or census of its own; a
bench row per runtime shows what the engine, not the file, is worth on this CPU.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, install_hint


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return f"OpenVINO is not installed (optional CPU runtime for ONNX files): {install_hint('openvino')}"
    return None


class OpenVinoRunner:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises plain RuntimeErrors for a file it cannot read
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"OpenVINO cannot load {path}: {first_line}",
                                  "re-export the file with `edgekit export --target onnx`") from exc

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(np.ascontiguousarray(batch, dtype=np.float32))[0], dtype=np.float32)


def load_runner(path: Path, threads: int | None = None) -> OpenVinoRunner:
    return OpenVinoRunner(path, threads)
