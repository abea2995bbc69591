"""An export's source file, read once: an edgekit float checkpoint or int8 model held in memory.

An export needs its source many times: its kind (float or int8) and recipe, its data config and
classes, the float weights the exporter starts from, the torch runner the parity gate compares
against, the manifest's precision and the sha256 its manifest records. Each of these used to read
the file again (eight torch.loads for one ONNX export). `SourceFile.read` loads it once; everything
else is derived from that payload, and what costs work (rebuilding an int8 model, the hash, the
manifest) is done at most once, on first use.

Every format's `export` and the torch runner take a `SourceFile` or a path (`as_source`), so the
Python API keeps taking paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, UnsupportedError

if TYPE_CHECKING:
    from torch import nn

    from ..model import Checkpoint, ModelSpec


@dataclass(eq=False)
class SourceFile:
    """One edgekit torch file's checked payload, and what is derived from it, each at most once."""

    path: Path
    payload: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> SourceFile:
        """The file's one torch.load, checked as the kind of edgekit file it says it is. A file that
        cannot be read at all is refused in a float checkpoint's words, as loading one refuses it."""
        from ..model import CHECKPOINT_FORMAT, QUANTIZED_FORMAT, check_payload, load_payload

        path = Path(path)
        payload = load_payload(path)
        found = payload.get("format") if isinstance(payload, dict) else None
        return cls(path, check_payload(payload, path, QUANTIZED_FORMAT if found == QUANTIZED_FORMAT
                                       else CHECKPOINT_FORMAT))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_int8(self) -> bool:
        from ..model import QUANTIZED_FORMAT

        return self.payload["format"] == QUANTIZED_FORMAT

    @property
    def spec(self) -> ModelSpec:
        from ..model import ModelSpec

        return ModelSpec.from_dict(self.payload["spec"])

    @cached_property
    def recipe(self) -> dict[str, Any] | None:
        """An int8 model's quantization recipe (mode, engine, ...), checked; None for a float checkpoint."""
        from ..qmodel import checked_recipe

        return checked_recipe(self.payload, self.path) if self.is_int8 else None

    @cached_property
    def sha256(self) -> str:
        from ..artifacts import sha256_file

        return sha256_file(self.path)

    @cached_property
    def manifest(self) -> dict[str, Any] | None:
        """The manifest beside the file, or None where it has none (or none that reads)."""
        from ..artifacts import read_manifest

        try:
            return read_manifest(self.path)
        except CheckpointError:
            return None

    @cached_property
    def float_checkpoint(self) -> Checkpoint:
        """A float checkpoint as it is (its tensors are the payload's: build() copies them into a model)."""
        from ..model import checkpoint_from_payload

        if self.is_int8:
            raise CheckpointError(f"{self.path} is an edgekit int8 model, not a float checkpoint",
                                  "pass a file written by `edgekit train/prune`")
        return checkpoint_from_payload(self.payload, self.path)

    @cached_property
    def quantized(self) -> tuple[nn.Module, dict[str, Any]]:
        """An int8 model rebuilt from the payload (load_quantized), once: the exporters and the gate's
        runner only read it. Leaves torch's quantized engine set to the file's, as load_quantized does."""
        from ..qmodel import load_quantized

        if not self.is_int8:
            raise CheckpointError(f"{self.path} is an edgekit float checkpoint, not an int8 model",
                                  "pass a file written by `edgekit quantize`")
        return load_quantized(self.path, self.payload)

    @cached_property
    def _dequantized(self) -> Checkpoint:
        from ..qmodel import dequantized_checkpoint

        return dequantized_checkpoint(self.path, self.quantized)

    def checkpoint(self, precision: str) -> Checkpoint:
        """The float checkpoint an exporter starts from.

        An edgekit checkpoint (fp32 or pruned) as it is. An int8 artifact (static PTQ or QAT) only
        for an int8 export, as its dequantized twin: writing it as fp32/fp16 would silently undo
        the quantization its accuracy was measured with.
        """
        if not self.is_int8:
            return self.float_checkpoint
        if precision != "int8":
            raise UnsupportedError(f"{self.name} is an int8 model; a {precision} export of it would be its "
                                   "dequantized copy", "export its float parent (named in its manifest) for fp32/fp16")
        return self._dequantized


def as_source(source: str | Path | SourceFile) -> SourceFile:
    """`source` as a SourceFile: itself when already read, else the file read now (once)."""
    return source if isinstance(source, SourceFile) else SourceFile.read(source)
