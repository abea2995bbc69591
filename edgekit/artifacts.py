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
import shlex
import shutil
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, OutputError

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
        try:
            yield tmp
        except OSError as exc:  # name the file the user asked for, not the temporary one
            if exc.filename in (None, str(tmp), tmp_name):
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
        apply_umask(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)  # there is no way to read the umask without setting it
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """The mode a plain open() would have given: mkstemp/mkdtemp make 0600/0700, which a service account cannot read."""
    mask = _umask()
    if path.is_dir():
        for sub in [path, *path.rglob("*")]:
            if not sub.is_symlink():
                sub.chmod((0o777 if sub.is_dir() else 0o666) & ~mask)
    elif path.exists():
        path.chmod(0o666 & ~mask)


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
# Any of these gives u8 x s8 dot products summed into int32; without them x86 int8 kernels use
# VPMADDUBSW, whose int16 pair sums are slower and can saturate (edgekit.formats.onnx_int8).
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


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


def parent_ref(parent: str | Path | None, sha256: str | None = None) -> dict[str, str] | None:
    """The manifest's link to `parent`; `sha256`: the file's hash when the caller has it already."""
    if parent is None:
        return None
    parent = Path(parent)
    return {"path": str(parent), "sha256": sha256 or sha256_file(parent)}


def current_command() -> str:
    """This process's command line, shell-quoted so a path or note with spaces pastes back as one argument."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _complete_manifest(manifest: Manifest, name: str, content: Path) -> None:
    """Fill in the file's name, the hash and size of `content` (its bytes), plain-data config and the command."""
    manifest.file = name
    manifest.sha256 = sha256_file(content)
    manifest.size_bytes = size_bytes(content)
    manifest.config = to_plain(manifest.config)
    manifest.metrics = to_plain(manifest.metrics)
    manifest.extra = to_plain(manifest.extra)
    if not manifest.command:
        manifest.command = current_command()


def write_manifest(artifact: str | Path, manifest: Manifest) -> Manifest:
    """Fill in the file's own hash and size, then write the manifest beside it atomically."""
    artifact = Path(artifact)
    _complete_manifest(manifest, artifact.name, artifact)
    atomic_write_text(manifest_path(artifact), json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def write_report_manifests(paths: dict[str, Path], manifest: Manifest, data: str = "json") -> None:
    """Manifests of a report: `manifest` beside its data file `paths[data]`, and for each other file
    (a view of that data: markdown, csv, a plot) a "<kind>-view" manifest whose parent is the data file
    and whose command, libraries, machine and date are the data file's."""
    write_manifest(paths[data], manifest)
    for key, path in paths.items():
        if key != data:
            write_manifest(path, Manifest(kind=f"{manifest.kind}-view", format=path.suffix.lstrip("."), precision="n/a",
                                          parent=parent_ref(paths[data]), command=manifest.command,
                                          config=manifest.config, metrics=manifest.metrics, extra=(
                                              {"rendered": manifest.extra["rendered"]}
                                              if "rendered" in manifest.extra else {}),
                                          versions=manifest.versions, machine=manifest.machine,
                                          created=manifest.created))


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    path = manifest_path(artifact)
    if not path.exists():
        raise CheckpointError(
            f"no manifest beside {artifact} (expected {path.name})",
            "artifacts made by edgekit carry one; re-create the artifact with edgekit",
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"manifest {path} is not valid JSON (truncated or edited): {exc}",
                              "re-create the artifact") from exc
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder where a manifest belongs", "remove it, then re-create the artifact") from None
    # readers .get() what they need, so any entry may be missing; a manifest that is not an object is refused here
    if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k, {}), dict)
                                                 for k in ("config", "metrics", "extra", "versions", "machine")):
        raise CheckpointError(f"manifest {path} cannot be read: damaged or edited", "re-create the artifact")
    if manifest.get("parent") is not None and not isinstance(manifest["parent"], dict):
        raise CheckpointError(f"manifest {path} has a damaged 'parent' entry", "re-create the artifact")
    return manifest


def update_manifest_metrics(artifact: str | Path, metrics: dict[str, Any]) -> None:
    """Add metrics measured after the artifact was written (the file itself is unchanged)."""
    data = read_manifest(artifact)
    data.setdefault("metrics", {}).update(to_plain(metrics))
    atomic_write_text(manifest_path(artifact), json.dumps(data, indent=2) + "\n")


# ---- guarding outputs ----------------------------------------------------------------------------
# edgekit replaces a path only when it is an earlier edgekit output of the same kind (it has a
# manifest saying so) or the user said --force; it never replaces the input of the same command,
# and never deletes a folder it did not make. Every command asks here (guard_output for a file or
# SavedModel, guard_folder for a folder, keep_unless_forced for what a folder holds), so these
# rules and the one "edgekit will not replace it" refusal live in one place
# (tests/test_output_guard.py holds the other modules to that).


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_writable_dir(directory: str | Path, create: bool = True) -> None:
    """Prove a file can be written in `directory` (root ignores modes, so write one and delete it).

    With `create`, the folder is made first; without, nothing is left behind: the nearest
    existing folder above it is probed instead."""
    directory = Path(directory)
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
            probe_dir = directory
        else:
            probe_dir = directory
            while not probe_dir.exists() and probe_dir != probe_dir.parent:
                probe_dir = probe_dir.parent
            if not probe_dir.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(directory))
        fd, probe = tempfile.mkstemp(prefix=".edgekit-write-probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError as exc:
        raise OutputError(f"cannot write into {directory}: a part of it is a file, not a folder",
                          "pass another --out") from exc
    except OSError as exc:
        from .errors import from_os_error

        error = from_os_error(exc)
        raise OutputError(f"cannot write into {directory}: {error.message.split(': ', 1)[-1]}", error.hint) from exc


def guard_output(out: str | Path, kind: str, sources: tuple = (), force: bool = False,
                 directory: bool = False) -> Path:
    """Refuse an output path whose writing would destroy what edgekit did not make; check it is writable.

    `kind` is the manifest kind this command writes; `sources` the inputs of the same command;
    `directory` whether the artifact itself is a folder (a SavedModel)."""
    out = Path(out)
    for source in sources:
        if source is not None and (_same_path(out, Path(source)) or out.resolve() == Path(source).resolve()):
            raise OutputError(f"the output {out} is the input of this command: writing it would destroy the source",
                              "choose another --out")
    if out.is_dir() and not directory:
        raise OutputError(f"the output {out} is an existing directory", "pass a file path, e.g. --out DIR/name")
    if out.exists() or out.is_symlink():
        if out.is_file() and directory:
            raise OutputError(f"the output {out} is an existing file; this target writes a folder", "choose another --out")
        recorded = None
        with contextlib.suppress(Exception):
            recorded = json.loads(manifest_path(out).read_text()).get("kind")
        if recorded is None:
            keep_unless_forced(out, f"{out} exists and is not an edgekit output (no manifest beside it)", force,
                               forceable=not out.is_dir())
        elif recorded != kind:
            keep_unless_forced(out, f"{out} is an edgekit {recorded}, not a {kind}", force)
    check_writable_dir(out.parent, create=False)
    return out


def guard_folder(folder: str | Path, option: str = "--out", sources: tuple = (), marker: str | None = None,
                 made: str = "output") -> Path:
    """Refuse a folder output that is a file. With `marker`, the folder is replaced whole: refused too
    when a source of the command is inside it, or when it holds files but not `marker` (edgekit did not
    make it: an edgekit `made` has that file)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is an existing file, not a folder", f"choose another {option}")
    if marker is None or not folder.is_dir():
        return folder
    for source in sources:
        if source is not None and Path(source).resolve().is_relative_to(folder.resolve()):
            raise OutputError(f"the source {source} is inside the {made} folder {folder}: replacing the folder "
                              "would delete it", f"choose another {option}")
    if any(folder.iterdir()) and not (folder / marker).is_file():
        keep_unless_forced(folder, f"{folder} exists and is not an edgekit {made} (no {marker} in it)", False,
                           option=option, ways=("empty that folder",), forceable=False)
    return folder


def keep_unless_forced(path: Path, what: str, force: bool, *, option: str = "--out", ways: tuple[str, ...] = (),
                       forceable: bool = True) -> None:
    """The one refusal of an output that is there: if `path` exists, say `what` it is and that edgekit
    will not replace it, unless --force says to. Not `forceable`: --force does not either (a folder
    edgekit did not make is never deleted). `ways`: what else the user may do, besides another `option`."""
    if not (path.exists() or path.is_symlink()) or (force and forceable):
        return
    choices = [*ways, f"choose another {option}"] + (["pass --force to replace it"] if forceable else [])
    hint = ", ".join(choices[:-1]) + (", or " if len(choices) > 1 else "") + choices[-1]
    raise OutputError(f"{what}; edgekit will not replace it", hint)


def staging_path(out: str | Path) -> Path:
    """A hidden sibling to write into: the final rename stays on one file system, and the suffix is
    kept because some exporters and runtimes decide by it."""
    out = Path(out)
    suffix = "".join(out.suffixes[-1:])
    return out.with_name(f".{out.name[: len(out.name) - len(suffix)]}.staging-{os.getpid()}{suffix}")


def remove_path(path: str | Path) -> None:
    """Remove a staging file or folder this process made (never a user's path: callers pass only staging names)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(staged: Path, out: Path) -> None:
    """Move `staged` (a file or a folder) to `out`. os.replace cannot overwrite a non-empty folder,
    so a folder at `out` is moved aside first and deleted only once the new one is in place: a
    reader sees the old one or the new one, never a mix."""
    if out.is_dir() and not out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)


def publish(staged: str | Path, out: str | Path, manifest: Manifest) -> Manifest:
    """Move a finished `staged` artifact to `out` with its manifest.

    Both are complete before either rename, so a failure (a full disk, Ctrl-C) leaves the old pair
    or nothing; only a kill between the two renames can split them, and `edgekit info` then says
    that the hash differs."""
    staged, out = Path(staged), Path(out)
    _complete_manifest(manifest, out.name, staged)
    apply_umask(staged)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.manifest.", suffix=".tmp", dir=out.parent)
    manifest_tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(manifest), indent=2) + "\n")
        apply_umask(manifest_tmp)
        replace_path(staged, out)  # guard_output has checked that an existing `out` is edgekit's
        os.replace(manifest_tmp, manifest_path(out))
    finally:
        if manifest_tmp.exists():
            manifest_tmp.unlink()
    return manifest


# ---- run locks -----------------------------------------------------------------------------------

LOCK_NAME = ".edgekit.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def run_lock(directory: str | Path, note=lambda message: None) -> Iterator[Path]:
    """Hold `directory/.edgekit.lock` while writing into `directory`: a second writer is refused with
    one line naming the first; the lock of a process that died (same host, pid gone) is taken over."""
    directory = Path(directory)
    check_writable_dir(directory)
    path = directory / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": current_command(),
          "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            pid = holder.get("pid")
            if isinstance(pid, int) and holder.get("host") == me["host"] and not _pid_alive(pid):
                note(f"note: taking over the lock {path} of pid {pid} (started {holder.get('started')}), "
                     "which is no longer running")
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise OutputError(
                f"{directory} is in use by another edgekit run: pid {pid or '?'} on {holder.get('host', '?')}, "
                f"started {holder.get('started', '?')} ({holder.get('command', '?')})",
                f"wait for it to finish or pass another --out; if that process is gone, delete {path}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(me) + "\n")
        break
    else:
        raise OutputError(f"cannot take the lock {path}", f"delete {path} if no edgekit run is using {directory}")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
