"""The typer app, its error handling, and the options and helpers every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from ..config import DataConfig, DataSource
from ..errors import EdgekitError, install_hint


class _Group(TyperGroup):
    def invoke(self, ctx):
        from ..errors import from_os_error

        from typer._click.exceptions import NoArgsIsHelpError, UsageError

        try:
            return super().invoke(ctx)
        except EdgekitError as error:
            fail(error)
        except NoArgsIsHelpError:
            raise
        except UsageError as error:  # a value typer itself cannot parse: one line too, not a framed box
            command = error.ctx.command_path if error.ctx is not None else "edgekit"
            typer.echo(f"error: {' '.join(error.format_message().split())} -> see '{command} --help'", err=True)
            raise typer.Exit(error.exit_code) from None
        except OSError as error:  # a read-only or full disk, a folder where a file was meant ...
            fail(from_os_error(error))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        finally:
            from ..distributed import shutdown

            shutdown()  # leave torchrun's process group cleanly (a no-op in one process)


def fail(error: EdgekitError):
    fix = f" -> {error.hint}" if error.hint else ""
    typer.echo(f"error: {error.message}{fix}", err=True)
    raise typer.Exit(error.exit_code) from None


ForceOption = typer.Option(False, "--force", help="replace an existing output that edgekit would otherwise keep")
TensorboardOption = typer.Option(None, "--tensorboard",
                                 help=f"write TensorBoard scalars here ({install_hint('tensorboard')})")


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, prune, quantize, export and benchmark a CIFAR-10 ResNet18 for the edge.")


def make_reporter():
    from ..distributed import from_env
    from ..report import Reporter, RichReporter

    # Under torchrun only rank 0 talks; the others' errors still reach stderr.
    return RichReporter() if from_env().is_main else Reporter()


SourceOption = typer.Option(DataSource.cifar10, "--source", help="cifar10 (download), folder (an ImageFolder tree) or synthetic")
DataDirOption = typer.Option(None, "--data-dir", help="image folder with train/ and test/, or where CIFAR-10 lives")


def data_config_from_options(source: DataSource, data_dir: Optional[Path], val_size: int | None = None,
                             train_per_class: int | None = None, seed: int = 0) -> DataConfig:
    config = DataConfig(source=source, data_dir=str(data_dir) if data_dir else None, seed=seed,
                        train_per_class=train_per_class)
    if val_size is not None:
        config.val_size = val_size
    return config


def override_data(source: Optional[DataSource], data_dir: Optional[Path]) -> Optional[DataConfig]:
    return data_config_from_options(source, data_dir) if source is not None else None


def main() -> None:
    app()
