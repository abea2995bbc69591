"""The repository, as the benchmark scripts see it: edgekit importable from the checkout, and paths
and commands written the way the README and results files write them.

    from _repo import ROOT, repo_path, script_command  # benchmarks/ is the running script's directory
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def repo_path(path: str | Path) -> str:
    """`path` relative to the repository when inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def machine_kind() -> str:
    """The CPU class a timed results file is named after: the targets differ between them."""
    from edgekit.train import cpu_has_native_bf16

    return "avx512-bf16" if cpu_has_native_bf16() else "avx2"


def script_command() -> str:
    """The running script's command line as the README gives it (the checkout's venv, the script's path
    in the repository), shell-quoted so an argument with spaces pastes back whole."""
    return shlex.join([".venv/bin/python", repo_path(sys.argv[0]), *sys.argv[1:]])
