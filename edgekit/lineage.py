"""Lineage: an artifact's parent links up to its fp32 root, and artifact discovery.

The root names the data the lineage learned (its `extra.data_config`): bench, eval and diff score
every file of a lineage on that data, and bench measures top-1 agreement against the root.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import manifest_path, read_manifest, sha256_file
from .config import DataConfig, data_config_from_dict
from .errors import ConfigError, EdgekitError
from .formats import SOURCE_FORMAT, Format, format_of_path


@dataclass
class Lineage:
    chain: list[Path]  # the artifact, its parent, ..., the root (existing files only)
    notes: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.chain[-1]


def _normalized(path: Path) -> Path:
    """One spelling per file (relative to the working directory when inside it), so a root named
    on the command line and the same root recorded as an absolute parent path are one root."""
    resolved = path.resolve()
    with contextlib.suppress(ValueError):
        return resolved.relative_to(Path.cwd().resolve())
    return resolved


def _resolve_parent(child: Path, recorded: str) -> Path | None:
    """A parent path as recorded (relative to where the command ran), or beside the child."""
    candidate = Path(recorded)
    for path in (candidate, child.parent / candidate.name, child.parent / candidate):
        if path.exists():
            return _normalized(path)
    return None


def lineage(artifact: Path) -> Lineage:
    chain, notes, seen = [_normalized(artifact) if artifact.exists() else artifact], [], {artifact.resolve()}
    current = artifact
    while True:
        try:
            parent = read_manifest(current).get("parent") or {}
        except EdgekitError:
            break
        if not parent.get("path"):
            break
        found = _resolve_parent(current, parent["path"])
        if found is None:
            notes.append(f"parent {parent['path']} of {current.name} not found; lineage stops there")
            break
        if found.resolve() in seen:
            break
        if parent.get("sha256") and found.is_file() and sha256_file(found) != parent["sha256"]:
            notes.append(f"{found} changed since {current.name} was made from it (sha256 differs)")
        seen.add(found.resolve())
        chain.append(found)
        current = found
    return Lineage(chain, notes)


def source_checkpoint(path: Path):
    """The checkpoint at `path` if it is an edgekit fp32/pruned checkpoint, else None."""
    from .model import load_checkpoint

    if not path.is_file() or format_of_path_or_none(path) is not SOURCE_FORMAT:
        return None
    try:
        checkpoint = load_checkpoint(path)
        checkpoint.build()
        return checkpoint
    except (EdgekitError, RuntimeError, KeyError, TypeError, ValueError):
        return None  # e.g. a torch int8 checkpoint: not buildable as a float network


def data_config_of(lin: Lineage) -> DataConfig:
    """The data config recorded by the nearest checkpoint up the lineage that has one, root first."""
    for path in reversed(lin.chain):  # the root first: it names the data the lineage learned
        checkpoint = source_checkpoint(path)
        if checkpoint is not None and checkpoint.extra.get("data_config"):
            return data_config_from_dict(checkpoint.extra["data_config"])
    raise ConfigError(f"no data config in the lineage of {lin.chain[0]} (root {lin.root})",
                      "pass --source/--data-dir to say which data to measure on")


def format_of_path_or_none(path: Path) -> Format | None:
    try:
        return format_of_path(path)
    except EdgekitError:
        return None


def discover(directory: Path) -> list[Path]:
    """Every artifact under `directory`: a file (or .savedmodel folder) of a known suffix with a manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--dir {directory} is not a directory", "pass the folder holding your artifacts")
    found = []
    for path in sorted(directory.rglob("*")):
        if path.name.endswith(".manifest.json") or path.name.startswith("."):
            continue
        if format_of_path_or_none(path) is not None and manifest_path(path).exists():
            found.append(path)
    return found
