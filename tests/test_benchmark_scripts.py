"""The benchmark scripts still load against today's edgekit.

They make every committed results file, and the README gives their commands as the way to
reproduce each figure, but no other test runs them (they take hours). A module moved or a helper
renamed in edgekit breaks them silently; here each one is loaded from its file (its imports run)
and asked for its usage, which builds its whole argument parser."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Scripts, not the helper modules they share (benchmarks/_repo.py).
SCRIPTS = sorted(p for p in BENCHMARKS.rglob("*.py") if not p.name.startswith("_"))


def test_every_script_is_found():
    assert {"compress.py", "export_matrix.py", "quick_demo.py", "tensorrt_check.py",
            "prune_importance_probe.py"} <= {s.name for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.relative_to(BENCHMARKS).as_posix())
def test_script_loads_and_prints_its_usage(script, monkeypatch, capsys):
    # As `python benchmarks/x.py` runs it: its own folder first on the path (scripts import their
    # neighbours), and registered while it loads (dataclasses look their module up).
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_a_script_records_its_command_as_the_readme_gives_it(monkeypatch):
    """Results files record how they were made: the script by its path in the repository, wherever it
    was started from, and every argument quoted so the line pastes back as it ran."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _repo import script_command

    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "compress.py"), "--out-dir", "my runs/a", "--note", "it's"])
    assert script_command() == ".venv/bin/python benchmarks/compress.py --out-dir 'my runs/a' --note 'it'\"'\"'s'"
