"""Bench measurement: one row per (artifact, runtime): accuracy, agreement, latency, throughput.

A row is a BenchRow (bench/row.py), which also owns its JSON layout.

Timing goes through edgekit.timing (the one latency loop and its percentile rule).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..artifacts import cpu_flags, library_versions, machine_info, read_manifest, to_plain
from ..config import BenchConfig, DataConfig
from ..errors import CheckpointError, DependencyError, EdgekitError, install_hint
from ..flips import diff_summary_line, top1_accuracy
from ..formats import SOURCE_FORMAT, Format, Runtime, predict_all
from ..report import Reporter
from ..timing import latency_stats, time_calls, time_interleaved
from ..lineage import Lineage, data_config_of, lineage, source_checkpoint
from .row import BenchRow, Latency, Throughput


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


class OtherWork:
    """How many cores other work took while a bench ran: the machine's busy CPU time (/proc/stat,
    the hypervisor's steal included) less this process's own (its threads and finished children),
    over the wall time. Unlike a load average, it is not a decaying memory of what ran before the
    bench (a training job stopped just before it still reads as load for minutes)."""

    def __init__(self) -> None:
        self.started = (_machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter())

    def cores(self) -> float | None:
        """Average cores used by everything but this process since construction; None off Linux."""
        busy, own, wall = _machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        busy_before, own_before, wall_before = self.started
        if busy is None or busy_before is None or wall <= wall_before:
            return None
        return round(max(0.0, (busy - busy_before) - (own - own_before)) / (wall - wall_before), 2)


def _machine_busy_seconds() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return None


def _own_cpu_seconds() -> float:
    try:
        import resource  # POSIX only; Windows has no finished-children figure
    except ImportError:
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def gpu_info() -> dict[str, str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if out:
            name, driver = (part.strip() for part in out.splitlines()[0].split(",", 1))
            return {"name": name, "driver": driver}
    return None


def environment(threads: int) -> dict[str, Any]:
    machine = machine_info()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": machine.get("processor"),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(affinity) if affinity is not None else None,
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "gpu": gpu_info(),
        "load_average_start": load_average(),
    }


def _one_image_call(runner: Any, inputs: np.ndarray) -> Callable[[int], Any]:
    n = len(inputs)
    return lambda i: runner.predict(inputs[i % n: i % n + 1])


def time_batch1(runner: Any, inputs: np.ndarray, config: BenchConfig) -> Latency:
    """Warm up, then time single-image calls until both `runs` calls and `min_seconds` have passed."""
    samples = time_calls(_one_image_call(runner, inputs), config.runs, config.warmup, config.min_seconds)
    return Latency(**latency_stats(samples, config.seed))


@dataclass
class PendingLatency:
    """A row that ran, waiting for its batch-1 timing beside the others (config.latency_rounds > 1)."""

    row: BenchRow
    runner: Any
    inputs: np.ndarray


def time_batch1_interleaved(pending: list[PendingLatency], config: BenchConfig, reporter: Reporter) -> None:
    """Batch-1 latency of every pending row in `config.latency_rounds` alternating rounds, each row
    getting at least `runs` timed calls and `min_seconds` in all. Each runner is warmed up alone
    first; one whose single-image call fails ends as an error row, as it would timed alone."""
    calls: dict[int, Callable[[int], Any]] = {}
    for index, item in enumerate(pending):
        call = _one_image_call(item.runner, item.inputs)
        try:
            for i in range(max(1, config.warmup)):
                call(i)
        except EdgekitError as exc:
            item.row.status, item.row.why = "error", f"batch-1 timing: {why(exc)}"
            continue
        calls[index] = call
    if not calls:
        return
    with reporter.progress("batch-1 latency, alternating rounds", total=config.latency_rounds) as progress:
        samples = time_interleaved(calls, config.runs, 0, config.latency_rounds, config.min_seconds,
                                   on_round=lambda r: progress.advance(1, status=f"{len(calls)} rows"))
    for index, times in samples.items():
        pending[index].row.latency_ms = Latency(**latency_stats(times, config.seed))


def throughput(runner: Any, inputs: np.ndarray, batch: int, seconds: float) -> Throughput:
    """Images/s at `batch`: one warm-up call at this shape, then calls for `seconds` (at least 3)."""
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])), dtype=np.float32)
    times_ms = time_calls(lambda _: runner.predict(x), runs=3, warmup=1, min_seconds=seconds)
    return Throughput(images_per_s=batch * len(times_ms) / (times_ms.sum() / 1e3),
                      ms_per_batch_p50=float(np.percentile(times_ms, 50)), calls=int(len(times_ms)))


class MeasureContext:
    """Per-run caches: data per data config, predictions of fp32 sources, calibration sets."""

    def __init__(self, config: BenchConfig, reporter: Reporter) -> None:
        self.config, self.reporter = config, reporter
        self.pending_latency: list[PendingLatency] = []  # rows timed together at the end (latency_rounds > 1)
        self.data: dict[str, Any] = {}
        self.source_predictions: dict[str, np.ndarray] = {}
        self.model_stats: dict[str, tuple[int, int]] = {}

    def data_config_for(self, lin: Lineage) -> DataConfig:
        if self.config.data is not None:
            config = DataConfig(**asdict(self.config.data))
        else:
            config = data_config_of(lin)
        if self.config.test_limit:
            config.test_limit = self.config.test_limit
        return config

    def test_set(self, data_config: DataConfig):
        from ..data import load_data, to_unit_float

        key = json.dumps(to_plain(data_config), sort_keys=True)
        if key not in self.data:
            data = load_data(data_config, self.reporter)
            self.data[key] = (data, to_unit_float(data.test_x).numpy(), data.test_y.numpy())
        return self.data[key]

    def val_set(self, data_config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        """The validation split of the same data: where the summary picks its winners."""
        from ..data import to_unit_float

        data = self.test_set(data_config)[0]
        return to_unit_float(data.val_x).numpy(), data.val_y.numpy()

    def torch_predictions(self, path: Path, images: np.ndarray, key: str) -> np.ndarray | None:
        cache_key = f"{path.resolve()}|{key}"
        if cache_key not in self.source_predictions:
            checkpoint = source_checkpoint(path)
            if checkpoint is None:
                return None
            runner = SOURCE_FORMAT.module().TorchRunner(checkpoint.build(), self.config.threads)
            logits, _ = predict_all(runner, images, self.config.eval_batch)
            self.source_predictions[cache_key] = logits.argmax(1)
        return self.source_predictions[cache_key]

    def params_macs(self, path: Path) -> tuple[int, int] | None:
        from ..model import count_macs, count_parameters

        key = str(path.resolve())
        if key not in self.model_stats:
            checkpoint = source_checkpoint(path)
            if checkpoint is None:
                return None
            model = checkpoint.build()
            self.model_stats[key] = (count_parameters(model), count_macs(model))
        return self.model_stats[key]


def size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def why(exc: BaseException) -> str:
    if isinstance(exc, EdgekitError):
        return f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def blank_row(path: Path, fmt_name: str, runtime: str) -> BenchRow:
    """A row not measured yet (an error until it is), stamped with the load as it starts."""
    return BenchRow(artifact=str(path), format=fmt_name, runtime=runtime, load_average=load_average())


def _missing_package(exc: ImportError) -> str | None:
    """The third-party package a failed import names; None for edgekit's own modules (a bug, not a missing extra)."""
    top = (exc.name or "").split(".")[0]
    return top if top and top != "edgekit" else None


def bench_one(path: Path, fmt: Format, runtime: Runtime, ctx: MeasureContext, baseline: str | None) -> BenchRow:
    """Measure one row. What a user or the machine can cause (a missing or damaged file, a runtime or
    device not here, data not found: edgekit's typed errors, an unreadable file, an optional package
    that does not import) ends the row with a one-line reason and the run goes on; anything else is a
    bug and raises with its traceback."""
    row = blank_row(path, fmt.name, runtime.name)
    row.baseline = baseline
    try:
        if not path.exists():
            raise CheckpointError(f"file not found: {path}", "check the path or re-create the artifact")
        row.size_bytes = size_bytes(path)
        with contextlib.suppress(EdgekitError):
            manifest = read_manifest(path)
            row.kind, row.precision = manifest.get("kind"), manifest.get("precision")
            row.manifest_config = manifest.get("config")
        reason = runtime.unavailable()
        if reason is not None:
            row.status, row.why = "unavailable", reason
            return row
        _measure(row, path, fmt, runtime, ctx)
    except DependencyError as exc:  # a runtime, package or device this machine lacks
        row.status, row.why = "unavailable", why(exc)
    except EdgekitError as exc:
        row.status, row.why = "error", why(exc)
    except OSError as exc:  # the file or its folder cannot be read (permissions, a dangling link, ...)
        row.status, row.why = "error", f"cannot read {exc.filename or path}: {exc.strerror or exc}"
    except ImportError as exc:
        package = _missing_package(exc)
        if package is None:
            raise
        hint = f" ({install_hint(fmt.extra)})" if fmt.extra else ""
        row.status, row.why = "unavailable", f"{runtime.name} needs the Python package '{package}', which does not import here{hint}"
    row.load_average_end = load_average()
    return row


def _measure(row: BenchRow, path: Path, fmt: Format, runtime: Runtime, ctx: MeasureContext) -> None:
    """Fill `row` with accuracy, agreement, latency and throughput; status ok once all are in."""
    config = ctx.config
    census_failure = None
    try:
        row.census = fmt.module().census(path)
    except EdgekitError as exc:  # a damaged file: loading it below says so; a file that runs gets a note
        census_failure = why(exc)
    lin = lineage(path)
    row.notes += lin.notes
    row.root = str(lin.root)
    source = next((p for p in lin.chain if source_checkpoint(p) is not None), None)
    row.source = str(source) if source else None
    if source is not None:
        row.params, row.macs = ctx.params_macs(source)
    data_config = ctx.data_config_for(lin)
    data, images, labels = ctx.test_set(data_config)
    runner = runtime.load(path, config.threads)
    row.runner = getattr(runner, "name", runtime.name)
    row.notes += list(getattr(runner, "notes", []))  # e.g. an engine whose kernels are not this CPU's
    logits, used_batch = predict_all(runner, images, config.eval_batch)
    if used_batch == 1 and config.eval_batch > 1:
        row.notes.append("the file takes one image per call (static batch 1)")
    predicted = logits.argmax(1)
    row.accuracy = top1_accuracy(logits, labels)
    row.test_images = int(len(labels))
    row.data = data.source
    val_images, val_labels = ctx.val_set(data_config)
    if len(val_labels):
        val_logits, _ = predict_all(runner, val_images, config.eval_batch)
        row.val_accuracy = top1_accuracy(val_logits, val_labels)
        row.val_images = int(len(val_labels))
    key = json.dumps(to_plain(data_config), sort_keys=True)
    root_pred = ctx.torch_predictions(lin.root, images, key)
    if root_pred is not None:
        row.agreement_root = float((predicted == root_pred).mean())
        if config.diff and lin.root.resolve() != path.resolve():
            row.diff_root = diff_summary_line(root_pred, predicted, labels, list(data.classes))
            row.notes.append(f"vs {lin.root.name}: {row.diff_root['text']}")
    source_pred = ctx.torch_predictions(source, images, key) if source is not None else None
    if source_pred is not None:
        row.agreement_source = float((predicted == source_pred).mean())
    if config.latency_rounds == 1:
        row.latency_ms = time_batch1(runner, images, config)
    for batch in config.batches:
        try:
            row.throughput[str(batch)] = throughput(runner, images, batch, config.sweep_seconds)
        except EdgekitError as exc:  # e.g. a TensorRT engine whose profile stops below this batch
            row.throughput[str(batch)] = Throughput(images_per_s=None, why=why(exc))
    if census_failure is not None:
        row.notes.append(f"no census of the file: {census_failure}")
    row.status = "ok"
    if config.latency_rounds > 1:
        ctx.pending_latency.append(PendingLatency(row, runner, images))


def pin_threads(threads: int) -> None:
    """torch's pool is process-wide; ORT and TFLite take `threads` per session in their runners."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # can only be set once per process
        torch.set_num_interop_threads(1)
