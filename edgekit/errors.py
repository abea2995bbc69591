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


def missing_dependency(module: str, extra: str, what: str) -> DependencyError:
    return DependencyError(
        f"{what} needs the Python package '{module}', which is not installed",
        f"pip install 'edgekit[{extra}]'",
    )
