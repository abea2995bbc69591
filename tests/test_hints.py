"""Every command-line option a message or hint tells the user to pass exists in the CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer

from edgekit.cli import app

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"
# `--name=value` is another program's argument list (nvidia-smi), not a hint to the user.
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+(?![=\w-])")


def cli_options() -> set[str]:
    group = typer.main.get_command(app)
    options = set()
    for command in group.commands.values():
        for param in command.params:
            options.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
    return options | {"--help"}  # every command has it (click adds it, not a declared parameter)


def options_named_in_strings() -> dict[str, list[str]]:
    """`--option` -> where a string literal in the package names it (docstrings included)."""
    named: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for option in OPTION.findall(node.value):
                    named.setdefault(option, []).append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return named


def test_every_option_a_message_names_exists():
    known = cli_options()
    assert {"--target", "--int8-io", "--calibration"} <= known
    missing = {option: where for option, where in options_named_in_strings().items()
               if option not in known}
    assert missing == {}, f"messages name options the CLI does not have: {missing}"


def test_the_scan_sees_a_wrong_option():
    assert OPTION.findall("pass --format onnx or --int8-io") == ["--format", "--int8-io"]
    assert OPTION.findall("nvidia-smi --format=csv") == []
