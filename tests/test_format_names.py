"""Formats are named in the format table and their own modules only.

Outside edgekit/formats/ a format or runtime name may appear in prose (docstrings, help text,
messages), never as a key something dispatches on: not compared against, not a dict key, not a
subscript, not a `case` pattern, not a member of a literal tuple/list/set that is compared or
iterated as a table. Adding a format must then mean one entry in the table and one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
NAMES = {"torch", "onnx", "tflite", "tensorrt", "openvino", "savedmodel", "onnxruntime", "torch-eager"}


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

    for node in ast.walk(ast.parse(source, filename)):
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
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            add(node, _names_in(node.args[0]) if node.args else [])
    return found


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
'''
    assert sorted(use.split()[-1] for use in dispatch_uses(dispatching)) == \
        sorted(["onnx", "tflite", "tensorrt", "torch", "savedmodel", "onnx", "tflite", "openvino"])
    prose = '''
"""Export to onnx or tflite."""
def f(target="onnx"):
    """the tensorrt runner"""
    raise ValueError(f"cannot export {target}: use onnx")
help_text = typer.Option(None, help="onnx | tflite")
export_artifact(path, "onnx", "int8")
'''
    assert dispatch_uses(prose) == []
