"""Artifacts: a file plus `<file>.manifest.json`, written atomically.

The manifest says what made the file (command, config, seed), what it came from (parent path
and sha256), what it measured (metrics), and where (library versions, machine, time).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError

MANIFEST_SUFFIX = ".manifest.json"
TRACKED_LIBRARIES = (
    "edgekit", "torch", "numpy", "onnx", "onnxruntime", "onnxslim", "torch-pruning",
    "tensorflow", "ai-edge-litert", "tensorrt", "openvino",
)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file; of a directory artifact (a SavedModel), over its relative paths and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def size_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Readers never see a half-written file, and a failure leaves the old file (if any) intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                         "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags]
    return []


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(Exception):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def to_plain(value: Any) -> Any:
    """Dataclasses, paths and enums as JSON-ready plain data."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and hasattr(value, "name"):  # Enum
        return value.value
    return value


@dataclass
class Manifest:
    kind: str  # checkpoint | pruned | quantized | export | calibration | bench ...
    format: str  # torch | onnx | tflite | tensorrt | json ...
    precision: str  # as counted in the file, not as requested
    file: str = ""
    sha256: str = ""
    size_bytes: int = 0
    parent: dict[str, str] | None = None  # {"path": ..., "sha256": ...}
    command: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    machine: dict[str, Any] = field(default_factory=machine_info)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def parent_ref(parent: str | Path | None) -> dict[str, str] | None:
    if parent is None:
        return None
    parent = Path(parent)
    return {"path": str(parent), "sha256": sha256_file(parent)}


def current_command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_manifest(artifact: str | Path, manifest: Manifest) -> Manifest:
    """Fill in the file's own hash and size, then write the manifest beside it atomically."""
    artifact = Path(artifact)
    manifest.file = artifact.name
    manifest.sha256 = sha256_file(artifact)
    manifest.size_bytes = size_bytes(artifact)
    manifest.config = to_plain(manifest.config)
    manifest.metrics = to_plain(manifest.metrics)
    manifest.extra = to_plain(manifest.extra)
    if not manifest.command:
        manifest.command = current_command()
    atomic_write_text(manifest_path(artifact), json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    path = manifest_path(artifact)
    if not path.exists():
        raise CheckpointError(
            f"no manifest beside {artifact} (expected {path.name})",
            "artifacts made by edgekit carry one; re-create the artifact with edgekit",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"manifest {path} is not valid JSON: {exc}", "re-create the artifact") from exc


def update_manifest_metrics(artifact: str | Path, metrics: dict[str, Any]) -> None:
    """Add metrics measured after the artifact was written (the file itself is unchanged)."""
    data = read_manifest(artifact)
    data.setdefault("metrics", {}).update(to_plain(metrics))
    atomic_write_text(manifest_path(artifact), json.dumps(data, indent=2) + "\n")
