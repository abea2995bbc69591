"""Formats are named in the format table and their own modules only.

Outside edgekit/formats/ a format or runtime name may appear in prose (docstrings, help text,
messages), never as a key something dispatches on: not compared against, not a dict key, not a
subscript, not a `case` pattern, not a member of a literal tuple/list/set that is compared or
iterated as a table, not an argument (positional or keyword: `export_artifact(p, "onnx", ...)`,
`Manifest(format="torch")`). Nor may a format's file suffix (".onnx", ".qdq.onnx", ".tflite",
".engine") be spelled out: it comes from the table. Adding a format must then mean one entry in
the table and one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
NAMES = {"torch", "onnx", "tflite", "tensorrt", "openvino", "savedmodel", "onnxruntime", "torch-eager"}
# The table's suffixes, except the source format's ".pt": torch.save's suffix also names files that
# are no format choice (the decoded-data cache, the training state last.pt).
SUFFIXES = {".onnx", ".engine", ".tflite", ".savedmodel"}


def _is_suffix_literal(value: object) -> bool:
    """A file name or suffix ending in a format's suffix ("x.qdq.onnx", ".engine"); prose has spaces."""
    return isinstance(value, str) and not any(c.isspace() for c in value) and value.endswith(tuple(SUFFIXES))


def _names_in(node: ast.AST) -> list[str]:
    """Format-name string constants in `node`, looking into tuples/lists/sets (e.g. ("onnx", "fp32"))."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [name for element in node.elts for name in _names_in(element)]
    return []


def dispatch_uses(source: str, filename: str = "<string>") -> list[str]:
    """`file:line name` for each format name used as a dispatch key in `source`."""
    found = []

    def add(node: ast.AST, names: list[str]) -> None:
        found.extend(f"{filename}:{node.lineno} {name}" for name in names)

    tree = ast.parse(source, filename)
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                add(node, _names_in(operand))
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if key is not None:
                    add(node, _names_in(key))
        elif isinstance(node, ast.Subscript):
            add(node, _names_in(node.slice))
        elif isinstance(node, ast.MatchValue):
            add(node, _names_in(node.value))
        elif isinstance(node, (ast.For, ast.comprehension)):
            add(node, _names_in(node.iter))
        elif isinstance(node, ast.Call):
            # an argument is a choice made here: `.get("onnx")`, `export_artifact(p, "onnx", ...)`, `format="torch"`
            for argument in [*node.args, *(keyword.value for keyword in node.keywords)]:
                add(node, _names_in(argument))
        if isinstance(node, ast.Constant) and _is_suffix_literal(node.value) and id(node) not in docstrings:
            add(node, [node.value])
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def test_no_format_name_is_a_dispatch_key_outside_the_formats_package():
    uses = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "formats" in path.relative_to(PACKAGE).parts:
            continue
        uses += dispatch_uses(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert uses == [], "format names used as dispatch keys (move them into the format table):\n" + "\n".join(uses)


def test_the_check_catches_each_dispatch_shape_and_spares_prose():
    dispatching = '''
if fmt.name == "onnx": pass
RUNTIMES = {"tflite": 1}
TOL = {("tensorrt", "fp32"): 1}
x = FORMATS["torch"]
y = table.get("savedmodel")
for name in ("onnx", "tflite"): pass
match target:
    case "openvino": pass
export_artifact(path, "onnx", "int8")
Manifest(kind="checkpoint", format="torch")
side = artifact.with_suffix(".qdq.onnx")
folder = fmt.suffix == ".savedmodel"
engine = f"{stem}.engine"
if path.name.endswith(".tflite"): pass
'''
    assert sorted(use.split()[-1] for use in dispatch_uses(dispatching)) == \
        sorted(["onnx", "tflite", "tensorrt", "torch", "savedmodel", "onnx", "tflite", "openvino", "onnx", "torch",
                ".qdq.onnx", ".savedmodel", ".engine", ".tflite"])
    prose = '''
"""Export to onnx or tflite, e.g. best.int8.onnx."""
def f(target="onnx"):
    """the tensorrt runner writes model.engine"""
    raise ValueError(f"cannot export {target}: use onnx")
help_text = typer.Option(None, help="onnx | tflite")
out = typer.Option(None, help="default: beside the checkpoint, e.g. best.fp16.onnx")
state = out / "last.pt"
'''
    assert dispatch_uses(prose) == []


def test_whether_an_int8_file_is_dynamic_is_asked_in_qmodel_only():
    """A file's recipe says "dynamic" in one place (qmodel.is_dynamic / refuse_dynamic); a format
    module comparing mode strings itself would drift from it (and from its refusal message)."""
    import re

    asks = re.compile(r"""(\[\s*["']mode["']\s*\]|\.get\(\s*["']mode["']\s*\))\s*[!=]=|QuantMode\.dynamic\.value""")
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "qmodel.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if asks.search(line)]
    assert not found, "use edgekit.qmodel.is_dynamic / refuse_dynamic:\n" + "\n".join(found)
    assert asks.search('if recipe.get("mode") == QuantMode.dynamic.value:')
    assert asks.search('if payload["recipe"]["mode"] != "static":')


def test_install_hints_are_spelled_in_one_place():
    """`pip install 'edgekit[x]'` comes from errors.install_hint / missing_dependency with the extra a
    format or stage names; TensorRT alone words its own (a CUDA 12 or 13 build to match the driver)."""
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name not in {"errors.py", "tensorrt.py"}
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if "pip install 'edgekit[" in line and not line.lstrip().startswith("#")]
    assert not found, "use edgekit.errors.install_hint(extra):\n" + "\n".join(found)


def _image_shape_literals(source: str) -> list[int]:
    """Lines where a tuple, list or call spells out CIFAR's image shape (3, 32, 32) or (32, 32, 3)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else node.args if isinstance(node, ast.Call) else []
        values = [item.value if isinstance(item, ast.Constant) and type(item.value) is int else None for item in items]
        if any(tuple(values[i:i + 3]) in {(3, 32, 32), (32, 32, 3)} for i in range(len(values) - 2)):
            lines.append(node.lineno)
    return lines


def test_the_image_shape_comes_from_the_model_spec():
    """ModelSpec.input_shape (or the file's own input) says what one image is; a (3, 32, 32) spelled
    out elsewhere breaks the day a model takes other images. data.py decodes CIFAR at its size and
    model.py defines it."""
    found = [f"{path.relative_to(PACKAGE)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name not in {"data.py", "model.py"} for line in _image_shape_literals(path.read_text())]
    assert not found, "read the shape from ModelSpec.input_shape:\n" + "\n".join(found)
    assert _image_shape_literals("x = torch.rand(1, 3, 32, 32)\ns = keras.Input(shape=(32, 32, 3))\n") == [1, 2]
    assert _image_shape_literals('raise E("expected [N, 3, 32, 32]")\nx = torch.rand(1, *spec.input_shape)\n') == []
