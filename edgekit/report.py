"""Progress, messages and tables. Library code talks to a `Reporter`; only the CLI makes a loud one.

`quiet` (the default everywhere) swallows everything, so the same functions run silently in tests.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence


class Progress:
    def advance(self, steps: int = 1, **fields: Any) -> None:  # noqa: D401 - interface
        pass


class Reporter:
    """Silent reporter; subclasses show things."""

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Progress]:
        yield Progress()

    def info(self, message: str) -> None:
        pass

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass


quiet = Reporter()


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class _RichProgress(Progress):
    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def advance(self, steps: int = 1, **fields: Any) -> None:
        status = "  ".join(f"{k} {format_cell(v)}" for k, v in fields.items())
        self.bar.update(self.task, advance=steps, status=status)


class RichReporter(Reporter):
    """Progress bars and tables on the terminal (stderr for progress, stdout for results)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.out = Console()
        self.err = Console(stderr=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Progress]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}")]
        with Bar(*columns, console=self.err, transient=False) as bar:
            yield _RichProgress(bar, bar.add_task(description, total=total, status=""))

    def info(self, message: str) -> None:
        self.err.print(message, highlight=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(format_cell(v) for v in row))
        self.out.print(table)
