"""The CLI's defaults are the config dataclasses' defaults: one home for every default.

An option is matched to the field it fills by reading the command's source, not by its name:
`--distill` fills PruneConfig.distill_alpha, `--onnx` QuantizeConfig.export_onnx, and calibrate's
`--seed` (the image choice) is not DataConfig.seed although it is named so.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import typer

from edgekit import cli, config, diagnose
from edgekit.cli import app

CONFIG_CLASSES = {name: cls for name, cls in vars(config).items()
                  if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == config.__name__}
# CLI helpers that build a config from arguments named after its fields.
CONFIG_HELPERS = {"data_config_from_options": (cli.data_config_from_options, config.DataConfig)}
# Library functions whose keyword arguments fill a config's fields (some under another name): the
# CLI's defaults for them must be the config's too.
CONFIG_FUNCTIONS = {"diff": (diagnose.diff, config.DiagnoseOptions, {}),
                    "run_explain": (diagnose.explain, config.DiagnoseOptions, {"images_count": "images"})}


def _plain(value):
    value = getattr(value, "value", value)  # enums
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return value


def _field_default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _callee(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else \
        call.func.attr if isinstance(call.func, ast.Attribute) else None


def option_fields(command) -> list[tuple[str, type, str]]:
    """(option's parameter, config class, field) for each option the command passes into a config."""
    callback = command.callback
    params = {p.name for p in command.params}
    tree = ast.parse(textwrap.dedent(inspect.getsource(callback)))
    # locals computed from options (bench: sweep = tuple(... batches ...)) carry them along
    carried: dict[str, set[str]] = {p: {p} for p in params}
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)]
    for _ in range(2):
        for node in assigns:
            sources = {p for n in ast.walk(node.value) if isinstance(n, ast.Name) for p in carried.get(n.id, ())}
            for target in node.targets:
                if isinstance(target, ast.Name) and sources and target.id not in params:
                    carried[target.id] = sources

    def option_in(expr: ast.AST, field: str) -> str | None:
        found = {p for n in ast.walk(expr) if isinstance(n, ast.Name) for p in carried.get(n.id, ())}
        if field in found:
            return field
        return found.pop() if len(found) == 1 else None  # several options in one field: not a default's home

    pairs = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = _callee(call)
        if name in CONFIG_CLASSES:
            cls, bound = CONFIG_CLASSES[name], {k.arg: k.value for k in call.keywords if k.arg}
        elif name in CONFIG_HELPERS:
            helper, cls = CONFIG_HELPERS[name]
            bound = inspect.signature(helper).bind_partial(
                *call.args, **{k.arg: k.value for k in call.keywords}).arguments
        elif name in CONFIG_FUNCTIONS:
            function, cls, renamed = CONFIG_FUNCTIONS[name]
            fields = {f.name for f in dataclasses.fields(cls)}
            arguments = inspect.signature(function).bind_partial(
                *call.args, **{k.arg: k.value for k in call.keywords}).arguments
            bound = {renamed.get(k, k): v for k, v in arguments.items() if renamed.get(k, k) in fields}
        else:
            continue
        for field, expr in bound.items():
            option = option_in(expr, field)
            if option is not None:
                pairs.append((option, cls, field))
    return pairs


def default_mismatches(typer_app) -> tuple[int, list[tuple]]:
    checked, mismatches = 0, []
    for name, command in typer.main.get_command(typer_app).commands.items():
        params = {p.name: p for p in command.params}
        for option, cls, field in option_fields(command):
            default = params[option].default
            if default is None:  # None: "not given", resolved later (e.g. from the checkpoint)
                continue
            checked += 1
            if _plain(default) != _plain(_field_default(cls, field)):
                mismatches.append((name, option, f"{cls.__name__}.{field}", default, _field_default(cls, field)))
    return checked, mismatches


def test_every_option_that_fills_a_config_field_defaults_to_that_field():
    checked, mismatches = default_mismatches(app)
    assert mismatches == []
    assert checked >= 40  # the rule covers the CLI's options, not a handful


def test_the_helpers_arguments_are_named_after_the_fields_they_fill():
    for name, (helper, cls) in CONFIG_HELPERS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(inspect.signature(helper).parameters) <= fields, name


def test_the_check_follows_an_option_into_a_field_of_another_name():
    small = typer.Typer()

    @small.command()
    def squeeze(distill: float = typer.Option(0.25), onnx: bool = typer.Option(False),
                batches: str = typer.Option("1,8"), seed: int = typer.Option(7)) -> None:
        sweep = tuple(int(b) for b in batches.split(","))
        config.PruneConfig(distill_alpha=distill)
        config.QuantizeConfig(export_onnx=onnx)
        config.BenchConfig(batches=sweep)
        print(seed)  # named like DataConfig.seed, fills no config: not checked

    @small.command()
    def other() -> None:
        pass

    checked, mismatches = default_mismatches(small)
    assert checked == 3
    assert sorted((option, field) for _, option, field, _, _ in mismatches) == \
        [("batches", "BenchConfig.batches"), ("distill", "PruneConfig.distill_alpha"),
         ("onnx", "QuantizeConfig.export_onnx")]
