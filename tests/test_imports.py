"""The package's import graph, read from the source (every import, inside functions too).

Imports run one way: cli -> pipeline -> stages -> formats -> qmodel/model -> the base
(artifacts, config, errors, report, data, timing). A module may import one in its own layer or
below, never above, and the graph has no cycle. `if TYPE_CHECKING:` imports are annotations,
not imports, and are left out.

Within the stage layer, a stage may run another stage (prune's fine-tune is `train_model`), but
not reach into its helpers: a helper two stages share belongs in a layer below both.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"

# Higher number = higher layer. A module under edgekit.formats is in the formats layer,
# one under edgekit.bench in the stage layer.
LAYERS = {
    "edgekit.cli": 6,
    "edgekit.pipeline": 5,
    **{f"edgekit.{stage}": 4 for stage in ("train", "train_loop", "train_state", "prune", "quantize", "calibrate",
                                           "export", "bench", "validate", "diagnose", "gradcam", "bundle",
                                           "evaluate", "finetune", "own_model")},
    "edgekit.formats": 3,
    "edgekit.lineage": 3,  # parent links up to the root: reads the format table, no stage
    "edgekit.describe": 3,  # what a file holds, what this machine runs: reads the format table, no stage
    "edgekit.qmodel": 2,
    "edgekit.qengine": 2,  # the quantized engines and their qconfigs, which qmodel builds on
    "edgekit.observers": 2,  # the range-search observer of the int8 model code
    "edgekit.qrelu6": 2,  # Conv+BN+ReLU6 as one int8 op (MobileNetV2), which qmodel fuses with
    "edgekit.qpack": 2,  # the int8 file's compact quantized tensors, which qmodel saves and loads through
    "edgekit.model": 2,
    "edgekit.mobilenet": 2,  # the second network model.build_model makes
    "edgekit.spec": 2,  # ModelSpec and the layers both networks share
    "edgekit.measure": 2,  # accuracy and latency of a torch model
    **{f"edgekit.{base}": 1 for base in ("artifacts", "config", "choices", "errors", "report", "data", "timing",
                                         "flips", "diagnose_plots", "tensorboard_log",
                                         "distributed", "averaging", "scratch")},
    "edgekit": 0,
}


# A stage's own modules, split off for size or by topic, are part of that stage.
# own_model is the export stage for a module of a user's own (its gate is validate's).
STAGE_PARTS = {"edgekit.train_loop": "edgekit.train", "edgekit.train_state": "edgekit.train",
               "edgekit.validate": "edgekit.export", "edgekit.bundle": "edgekit.export",
               "edgekit.own_model": "edgekit.export", "edgekit.gradcam": "edgekit.diagnose"}
# Running another stage as a step of one's own: its entry points, not its helpers.
ENTRY_POINTS = {"edgekit.train": {"train_model"}, "edgekit.prune": {"prune_checkpoint"},
                "edgekit.quantize": {"quantize_checkpoint"},
                "edgekit.finetune": {"finetune_model", "control_checkpoint"}, "edgekit.export": {"export_artifact"},
                "edgekit.calibrate": {"make_calibration", "save_calibration"}}
# Helpers one stage takes from another today: each should move below the stages. Listed so no new
# one joins them; an entry that no longer happens fails the test until it is struck from here.
STAGE_HELPER_ALLOWED = {
    # the calibration file's reader and naming live with the stage that writes it; they belong
    # with the other artifact readers in the base layer
    ("edgekit.quantize", "edgekit.calibrate", "CalibrationSet"),
    ("edgekit.quantize", "edgekit.calibrate", "load_calibration"),
    ("edgekit.quantize", "edgekit.calibrate", "read_definition"),
    ("edgekit.bench", "edgekit.calibrate", "read_definition"),
    ("edgekit.export", "edgekit.calibrate", "load_calibration"),
    ("edgekit.export", "edgekit.calibrate", "read_definition"),
    ("edgekit.export", "edgekit.calibrate", "calibration_data_config"),
    ("edgekit.bench.baselines", "edgekit.calibrate", "DEFAULT_DIR"),
    ("edgekit.bench.baselines", "edgekit.calibrate", "DEFAULT_SIZE"),
    ("edgekit.bench.baselines", "edgekit.calibrate", "default_name"),
    ("edgekit.bench.baselines", "edgekit.calibrate", "load_calibration"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    probe = name
    while probe:
        if probe in LAYERS:
            return LAYERS[probe]
        probe = probe.rpartition(".")[0]
    raise AssertionError(f"{name} has no layer: add it to LAYERS in tests/test_imports.py")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The edgekit modules `name` imports, anywhere in its body."""
    return {module for module, _ in imported_names(name, path, modules)}


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> set[tuple[str, str]]:
    """(module, name) for each edgekit name `name` imports; "*" where it imports a whole module."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[tuple[str | None, str]] = set()

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edgekit":
                    found.add((resolve(alias.name), "*"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "edgekit":
                for alias in node.names:
                    # `from . import onnx` names a submodule; `from . import load_source` a package attribute
                    sub = f"{target}.{alias.name}"
                    found.add((resolve(sub), "*") if sub in modules else (resolve(target), alias.name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {(module, what) for module, what in found if module is not None and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if b != "edgekit" and layer(b) > layer(a))


def stage_of(name: str) -> str:
    if name.startswith("edgekit.bench"):
        return "edgekit.bench"
    return STAGE_PARTS.get(name, name)


def stage_helper_imports() -> set[tuple[str, str, str]]:
    """(importer, module, name) for each name a stage imports from another stage, entry points aside."""
    modules = all_modules()
    stage_layer, found = LAYERS["edgekit.train"], set()
    for importer, path in modules.items():
        if layer(importer) != stage_layer:
            continue
        for module, what in imported_names(importer, path, modules):
            if module == "edgekit" or layer(module) != stage_layer or stage_of(module) == stage_of(importer):
                continue
            if what not in ENTRY_POINTS.get(stage_of(module), ()):
                found.add((importer, module, what))
    return found


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_imports_run_one_way():
    assert upward_arrows(import_graph()) == []


def test_a_stage_runs_another_stage_but_takes_none_of_its_helpers():
    found = stage_helper_imports()
    new = sorted(found - STAGE_HELPER_ALLOWED)
    assert new == [], "a stage imports another stage's helpers (move them below the stages):\n" + \
        "\n".join(f"{a} imports {n} from {m}" for a, m, n in new)
    gone = sorted(STAGE_HELPER_ALLOWED - found)
    assert gone == [], f"no longer imported, strike from STAGE_HELPER_ALLOWED: {gone}"


def test_the_int8_model_is_a_leaf_under_stages_and_formats():
    graph = import_graph()
    assert not {m for m in graph["edgekit.qmodel"] if layer(m) >= layer("edgekit.formats")}
    for name, targets in graph.items():
        if name.startswith("edgekit.formats") or name.startswith("edgekit.bench"):
            assert "edgekit.quantize" not in targets, f"{name} imports the quantize stage"


def test_the_checker_sees_a_cycle_hidden_in_a_function_and_an_upward_arrow(tmp_path, monkeypatch):
    # The checks above pass only if the walker really reads function bodies and relative imports.
    pkg = tmp_path / "edgekit"
    (pkg / "formats").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def f():\n    from .formats import x\n")
    (pkg / "formats" / "__init__.py").write_text("from ..model import f\n")
    (pkg / "errors.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import app\n")
    (pkg / "cli.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["edgekit.model"] == {"edgekit.formats"}
    assert graph["edgekit.errors"] == set()  # annotation-only import
    assert find_cycle(graph) is not None
    assert upward_arrows(graph) == ["edgekit.model -> edgekit.formats"]


def test_the_checker_sees_a_stage_reaching_into_another_stages_helpers(tmp_path, monkeypatch):
    pkg = tmp_path / "edgekit"
    (pkg / "bench").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bench" / "__init__.py").write_text("")
    (pkg / "bench" / "measure.py").write_text("from . import lineage\n")  # its own part: allowed
    (pkg / "bench" / "lineage.py").write_text("")
    (pkg / "train.py").write_text("from .train_state import save_train_state\n")  # its own part: allowed
    (pkg / "train_state.py").write_text("")
    (pkg / "prune.py").write_text("def f():\n    from .train import train_model, evaluate\n")
    (pkg / "export.py").write_text("")
    (pkg / "diagnose.py").write_text("import edgekit.bench.measure\nfrom . import export\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert stage_helper_imports() == {("edgekit.prune", "edgekit.train", "evaluate"),
                                      ("edgekit.diagnose", "edgekit.bench.measure", "*"),
                                      ("edgekit.diagnose", "edgekit.export", "*")}
