"""The CLI's defaults are the config dataclasses' defaults: one home for every default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from edgekit import config
from edgekit.cli import app

# Which dataclasses each command's options configure (first match wins for a shared name).
COMMAND_CONFIGS = {
    "train": (config.TrainConfig, config.DataConfig),
    "prune": (config.PruneConfig, config.DataConfig),
    "quantize": (config.QuantizeConfig, config.DataConfig),
    "export": (config.ExportOptions,),
    "bench": (config.BenchConfig,),
    "calibrate": (config.DataConfig,),
}


def _plain(value):
    value = getattr(value, "value", value)  # enums
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return value


def test_every_option_named_after_a_config_field_defaults_to_that_field():
    commands = typer.main.get_command(app).commands
    checked, mismatches = 0, []
    for name, classes in COMMAND_CONFIGS.items():
        defaults = {}
        for cls in classes:
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    defaults.setdefault(f.name, f.default)
        for param in commands[name].params:
            if param.name in defaults and param.default is not None:
                checked += 1
                if _plain(param.default) != _plain(defaults[param.name]):
                    mismatches.append((name, param.name, param.default, defaults[param.name]))
    assert not mismatches
    assert checked >= 30  # the rule covers the CLI's options, not a handful
