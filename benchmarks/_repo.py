"""The repository, as the benchmark scripts see it: edgekit importable from the checkout, and paths
written the way the README and results files write them.

    from _repo import ROOT, repo_path  # benchmarks/ is the running script's directory
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def repo_path(path: str | Path) -> str:
    """`path` relative to the repository when inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
