"""One home for refusing an output that is already there: edgekit.artifacts.

Every command that would replace something (a file artifact, a run folder, a bundle folder) asks
artifacts.guard_output / guard_folder / keep_unless_forced, so the rules (what --force may
replace, that a folder edgekit did not make is never deleted) and the one-line "edgekit will
not replace it ... --force" refusal are written once. The rule test reads the source: a module
outside artifacts.py that words such a refusal itself fails it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgekit.artifacts import guard_folder, keep_unless_forced
from edgekit.errors import OutputError
from edgekit.train import check_run_dir

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
HOME = PACKAGE / "artifacts.py"
# The words of a refusal to replace an existing output.
REFUSAL = re.compile(r"--force|will not replace|would replace|already exists|exists and is not")


def _texts(node: ast.AST) -> list[str]:
    """The literal text inside an expression: strings, f-string parts, concatenations."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def refusals_outside_home(package: Path = PACKAGE, home: Path = HOME) -> list[str]:
    """`path:line` of each error built outside `home` whose text words an existing-output refusal."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if not name.endswith("Error"):
                continue
            args = [*node.args, *(k.value for k in node.keywords)]
            if any(REFUSAL.search(text) for arg in args for text in _texts(arg)):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return found


def test_only_artifacts_words_the_refusal_of_an_existing_output():
    assert refusals_outside_home() == [], "use artifacts.guard_output / guard_folder / keep_unless_forced"


def test_the_rule_sees_a_refusal_written_elsewhere(tmp_path):
    package = tmp_path / "edgekit"
    package.mkdir()
    (package / "artifacts.py").write_text('def keep(p):\n    raise OutputError(f"{p} exists", "pass --force")\n')
    (package / "train.py").write_text(
        "def check(out):\n"
        "    keep(out)  # the shared guard: fine\n"
        "    if (out / 'best.pt').exists():\n"
        "        raise errors.OutputError(f'{out} holds a run; ' 'will not replace it', hint='another --out')\n")
    (package / "bundle.py").write_text("def f(b):\n    raise OutputError(f'{b} is a file', 'another --bundle')\n")
    assert refusals_outside_home(package, package / "artifacts.py") == ["edgekit/train.py:4"]


def test_an_interrupted_run_is_kept_unless_resumed_or_forced(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"state")
    with pytest.raises(OutputError, match="holds an interrupted run") as info:
        check_run_dir(out, resume=False, force=False)
    assert "\n" not in info.value.message and "--resume" in info.value.hint and "--force" in info.value.hint
    check_run_dir(out, resume=True, force=False)
    check_run_dir(out, resume=False, force=True)
    assert (out / "last.pt").read_bytes() == b"state"  # checking never touches it


def test_a_file_where_a_folder_goes_is_refused_by_either_guard(tmp_path):
    file = tmp_path / "taken"
    file.write_text("mine")
    with pytest.raises(OutputError, match="--out .* is an existing file, not a folder"):
        check_run_dir(file, resume=False, force=True)
    with pytest.raises(OutputError, match="--bundle .* is an existing file, not a folder"):
        guard_folder(file, "--bundle", marker="edgekit-bundle.json", made="bundle")
    assert file.read_text() == "mine"


def test_a_folder_edgekit_did_not_make_is_kept_and_no_force_is_offered(tmp_path):
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="is not an edgekit bundle") as info:
        guard_folder(folder, "--bundle", marker="edgekit-bundle.json", made="bundle")
    assert "--force" not in info.value.hint and "empty that folder" in info.value.hint
    (folder / "edgekit-bundle.json").write_text("{}")  # now edgekit's: replaceable
    assert guard_folder(folder, "--bundle", marker="edgekit-bundle.json", made="bundle") == folder
    empty = tmp_path / "empty"
    empty.mkdir()
    assert guard_folder(empty, "--bundle", marker="edgekit-bundle.json", made="bundle") == empty


def test_keep_unless_forced_lets_force_through_only_where_it_may(tmp_path):
    there = tmp_path / "model.onnx"
    there.write_bytes(b"x")
    keep_unless_forced(tmp_path / "absent", "nothing", force=False)  # nothing there: nothing to refuse
    keep_unless_forced(there, f"{there} is someone's", force=True)
    with pytest.raises(OutputError, match="is someone's; edgekit will not replace it") as info:
        keep_unless_forced(there, f"{there} is someone's", force=True, forceable=False)
    assert info.value.hint == "choose another --out"
    with pytest.raises(OutputError) as info:
        keep_unless_forced(there, "it", force=False, option="-o", ways=("pass --resume to continue it",))
    assert info.value.hint == "pass --resume to continue it, choose another -o, or pass --force to replace it"
