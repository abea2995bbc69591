"""Progress, messages and tables. Library code talks to a `Reporter`; only the CLI makes a loud one.

`quiet` (the default everywhere) swallows everything, so the same functions run silently in tests.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Sequence


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


def _status(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k} {format_cell(v)}" for k, v in fields.items())


class _RichProgress(Progress):
    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def advance(self, steps: int = 1, **fields: Any) -> None:
        self.bar.update(self.task, advance=steps, status=_status(fields))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _LineProgress(Progress):
    """Progress as plain lines, at most one per `interval` seconds and one at the end (also when the loop raises).

    A redirected run (nohup, CI, a batch job's log) cannot redraw a bar: rich would show nothing
    until the loop ends, which for a fine-tune epoch on a CPU is half an hour of silence."""

    def __init__(self, write: Callable[[str], None], description: str, total: int | None, interval: float) -> None:
        self.write, self.description, self.total, self.interval = write, description, total, interval
        self.start = self.last_line = time.monotonic()
        self.done, self.status = 0, ""

    def advance(self, steps: int = 1, **fields: Any) -> None:
        self.done += steps
        if fields:
            self.status = _status(fields)
        if time.monotonic() - self.last_line >= self.interval:
            self.line()

    def line(self) -> None:
        now = time.monotonic()
        self.last_line = now
        elapsed = now - self.start
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        left = ""
        if self.total and 0 < self.done < self.total:
            left = f"  ~{_clock(elapsed / self.done * (self.total - self.done))} left"
        self.write(f"{self.description} {count}  {_clock(elapsed)}{left}  {self.status}".rstrip())


class RichReporter(Reporter):
    """Progress bars and tables on the terminal (stderr for progress, stdout for results).

    When stderr is not a terminal, progress is written as a plain line every `log_interval` seconds
    instead of a bar."""

    def __init__(self, log_interval: float = 60.0, err: Any = None) -> None:
        from rich.console import Console

        self.out = Console()
        self.err = err if err is not None else Console(stderr=True)
        self.log_interval = log_interval

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Progress]:
        if not self.err.is_terminal:
            lines = _LineProgress(self.info, description, total, self.log_interval)
            try:
                yield lines
            finally:  # as a bar left on screen would: a loop cut off (Ctrl-C, an error) says how far it got
                lines.line()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}")]
        with Bar(*columns, console=self.err, transient=False) as bar:
            yield _RichProgress(bar, bar.add_task(description, total=total, status=""))

    def info(self, message: str) -> None:
        # markup=False: a message is literal text; "edgekit[tensorrt]" or a path with brackets must print as is.
        self.err.print(message, markup=False, highlight=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from rich.table import Table
        from rich.text import Text

        # Text(...) cells are literal: rich markup would eat "[tensorrt]" in an install hint.
        table = Table(title=Text(title))
        for column in columns:
            table.add_column(Text(column))
        for row in rows:
            table.add_row(*(Text(format_cell(v)) for v in row))
        self.out.print(table)


# ---- plots (matplotlib, Agg backend, written atomically) ---------------------------------------


def _save_figure(figure: Any, path: Any) -> None:
    from pathlib import Path

    import matplotlib.pyplot as plt

    from .artifacts import atomic_path

    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict], path: Any) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [h["train_loss"] for h in history], label="train")
    left.plot(epochs, [h["val_loss"] for h in history], label="val")
    left.set_xlabel("epoch"), left.set_ylabel("loss"), left.legend(), left.grid(alpha=0.3)
    for key, label in (("train_accuracy", "train"), ("val_accuracy", "val"), ("test_accuracy", "test")):
        right.plot(epochs, [100 * h[key] for h in history], label=label)
    right.set_xlabel("epoch"), right.set_ylabel("top-1 accuracy (%)"), right.legend(), right.grid(alpha=0.3)
    figure.suptitle("training curves")
    _save_figure(figure, path)


def plot_confusion(matrix: Any, classes: Sequence[str], path: Any, title: str = "confusion matrix") -> None:
    plt = _pyplot()
    matrix = matrix.numpy() if hasattr(matrix, "numpy") else matrix
    n = len(classes)
    figure, axis = plt.subplots(figsize=(0.6 * n + 2.5, 0.6 * n + 2))
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(n), classes, rotation=45, ha="right"), axis.set_yticks(range(n), classes)
    axis.set_xlabel("predicted"), axis.set_ylabel("true"), axis.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            axis.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                      color="white" if matrix[i, j] > threshold else "black")
    figure.colorbar(image, ax=axis, fraction=0.046)
    _save_figure(figure, path)


def plot_pareto(points: Sequence[dict], path: Any, title: str = "accuracy vs latency") -> None:
    """Accuracy against batch-1 p50 latency (log scale), marker area by file size, Pareto front drawn.

    Each point: label, latency_ms, accuracy (0-1), size_bytes, baseline (bool: hollow marker).
    Points are numbered on the plot and named in a key beside it: full labels collide when
    several files land at the same latency.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(13, 6))
    figure.subplots_adjust(right=0.6)
    sizes = [p.get("size_bytes") or 0 for p in points]
    largest = max(sizes) if sizes and max(sizes) > 0 else 1
    key = []
    for number, (point, size) in enumerate(zip(points, sizes), 1):
        area = 30 + 600 * size / largest
        style = {"facecolors": "none", "edgecolors": "tab:red"} if point.get("baseline") else {"color": "tab:blue", "alpha": 0.6}
        axis.scatter(point["latency_ms"], 100 * point["accuracy"], s=area, **style)
        axis.annotate(str(number), (point["latency_ms"], 100 * point["accuracy"]), fontsize=8,
                      xytext=(3 + 9 * (number % 3), 3 + 7 * (number % 2)), textcoords="offset points")
        key.append(f"{number:>2}  {point['label']}  ({point['latency_ms']:.3g} ms, {100 * point['accuracy']:.2f} %)")
    # The front: points no other point beats on both latency and accuracy.
    ordered = sorted(points, key=lambda p: (p["latency_ms"], -p["accuracy"]))
    front, best = [], -1.0
    for point in ordered:
        if point["accuracy"] > best:
            front.append(point)
            best = point["accuracy"]
    if len(front) > 1:
        axis.step([p["latency_ms"] for p in front], [100 * p["accuracy"] for p in front], where="post",
                  color="tab:green", alpha=0.6, label="Pareto front")
        axis.legend(loc="lower right", fontsize=8)
    if points:
        axis.set_xscale("log")
    axis.set_xlabel("batch-1 p50 latency (ms, log scale)")
    axis.set_ylabel("top-1 test accuracy (%)")
    axis.set_title(title + "\nmarker area ~ file size; hollow red = baseline without edgekit", fontsize=9)
    axis.grid(alpha=0.3, which="both")
    figure.text(0.62, 0.5, "\n".join(key), fontsize=7, family="monospace", va="center")
    _save_figure(figure, path)
