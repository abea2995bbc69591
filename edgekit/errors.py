"""Typed errors. Each carries a one-line problem and a one-line fix; the CLI prints both.

Library code raises these for anything a user can cause (bad paths, wrong options, corrupt
files, missing optional runtimes). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: `message` says what is wrong, `hint` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DataError(EdgekitError):
    """The data set is missing, empty, corrupt or unreachable."""


class CheckpointError(EdgekitError):
    """A checkpoint or artifact is missing, corrupt, or made for another model."""


class ConfigError(EdgekitError):
    """An option or combination of options that cannot work."""

    exit_code = 2


class UnsupportedError(EdgekitError):
    """A layer, target or precision this build cannot handle."""


class DependencyError(EdgekitError):
    """An optional runtime (TensorFlow, TensorRT, a GPU, ...) is not available."""


class CalibrationError(EdgekitError):
    """A calibration set that does not match the data, preprocessing or model."""


class ParityError(EdgekitError):
    """An export whose outputs drifted from its source beyond tolerance."""


def install_hint(extra: str) -> str:
    """The one spelling of "get this optional part": the extra a format or stage names."""
    return f"pip install 'edgekit[{extra}]'"


def missing_dependency(module: str, extra: str, what: str) -> DependencyError:
    return DependencyError(f"{what} needs the Python package '{module}', which is not installed", install_hint(extra))


class OutputError(EdgekitError):
    """An output that cannot be written, or whose writing would destroy something edgekit did not make."""


# errno -> (what it means, what to do); anything else keeps the system's own words.
_OS_FIXES = {
    "EROFS": ("the file system is read-only", "write to a writable folder (pass another --out)"),
    "EACCES": ("permission denied", "write to a folder you own (pass another --out), or fix its permissions"),
    "EPERM": ("operation not permitted", "write to a folder you own (pass another --out), or fix its permissions"),
    "ENOSPC": ("no space left on the device", "free some space, or write to another disk (--out)"),
    "EDQUOT": ("disk quota exceeded", "free some space, or write to another disk (--out)"),
    "EISDIR": ("it is a directory", "pass a file path, not a folder"),
    "ENOTDIR": ("a part of the path is a file, not a folder", "check the path"),
    "EEXIST": ("it already exists", "remove it or choose another path"),
    "ENOENT": ("no such file or directory", "check the path"),
    "ENAMETOOLONG": ("the name is too long", "use a shorter path"),
}


def from_os_error(error: OSError) -> EdgekitError:
    """An OSError (read-only disk, full disk, a directory where a file was meant ...) as one clear line."""
    import errno as _errno

    name = _errno.errorcode.get(error.errno or 0, "")
    meaning, fix = _OS_FIXES.get(name, (error.strerror or str(error), "check the path and the disk"))
    path = error.filename if error.filename is not None else "a file"
    if error.filename2 is not None:
        path = f"{error.filename} -> {error.filename2}"
    return OutputError(f"cannot use {path}: {meaning}", fix)
