"""Every name the code reads is defined: pyflakes over the package, the benchmarks and the tests.

A name that is not defined fails only when its line runs, and error paths run rarely: splitting
edgekit/cli.py into a package once left `edgekit bench`'s "no row ran" message calling a helper
that stayed behind in another module. Only undefined names are checked here; unused imports are
left alone (several modules re-export what an older import path named).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def undefined_names(paths: list[Path]) -> list[str]:
    from pyflakes import checker, messages

    undefined = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for message in checker.Checker(tree, filename=path.name).messages:
            if isinstance(message, undefined):
                found.append(str(message))
    return found


@pytest.mark.parametrize("folder", ["edgekit", "benchmarks", "tests"])
def test_every_name_read_is_defined(folder):
    paths = sorted((ROOT / folder).rglob("*.py"))
    assert paths
    assert undefined_names(paths) == []


def test_the_check_finds_an_undefined_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\n\ndef f():\n    return helper_that_moved(os.sep)\n")
    assert undefined_names([sample]) == ["sample.py:5:12: undefined name 'helper_that_moved'"]
