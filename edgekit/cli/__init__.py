"""The `edgekit` command: a thin typer layer over the library functions.

Errors: every EdgekitError raised below becomes one line on stderr (problem, then fix) and its
exit code; anything else is a bug and keeps its traceback (edgekit/cli/app.py).

One function per command, mostly option declarations whose defaults are read from the config
dataclasses; each body maps options to a config and calls one library function. Commands import
their stage inside the function, so `edgekit --help` does not load torch. They live by job:
train_commands (train, eval, info, doctor, pipeline), compress_commands (calibrate, prune,
control, quantize) and deploy_commands (export, bench, diff, explain).
"""

from .app import app, data_config_from_options, main

# Each module registers its commands on `app` when imported, in the pipeline's order.
from . import train_commands, compress_commands, deploy_commands  # noqa: E402,F401,I001  (registration)

__all__ = ["app", "data_config_from_options", "main"]
