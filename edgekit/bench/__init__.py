"""Bench: one honest table of accuracy, latency and size for every artifact, measured in one run.

Protocol (recorded in every result file):
  * every artifact runs through its format's runner (edgekit.formats), and through each
    runtime the format table lists for that format (an ONNX file: ONNX Runtime, and OpenVINO
    when it is installed); each runtime is its own row;
  * accuracy on the test split of the data the artifact's lineage was trained on (parent
    links up to the root checkpoint, whose `extra.data_config` says which data), and top-1
    agreement with the fp32 root and with the nearest torch source on the same images;
  * batch-1 latency: `warmup` untimed calls, then timed calls until both `runs` calls and
    `min_seconds` have passed; p50/p90/p99 and the mean with a seeded bootstrap 95 % CI.
    Rows are timed after every accuracy pass, together, in `latency_rounds` alternating rounds
    (each round a share of every row's calls), so a drift in the machine's speed lands on all
    of them alike and a ratio between two rows is not a ratio between two moments (1: each
    row alone, right after its accuracy pass). Consecutive calls are not independent (caches,
    frequency, neighbours on a shared machine), so the CI describes this sample, not the machine;
  * a throughput sweep over batch sizes, each for `sweep_seconds` (at least 3 calls);
  * thread count fixed for every runtime and recorded, with the CPU model and flags, library
    versions, GPU and the load average before the bench starts (its own threads not yet in it),
    per row and after.

A row that cannot run (missing or corrupt file, runtime not installed, a batch the file does
not accept) says why and the rest of the run goes on; when every file named is missing or damaged
(and no --dir), nothing could run, and the first is refused in one line before any work.

The package, by job: lineage (parent links, discovery), row (one row, typed, and its JSON
layout), measure (one row: accuracy, agreement, latency, throughput), baselines (stock files made
in the same run), render (result files, summary, notes), compare (two runs, row by row). `bench()` below runs them in that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..artifacts import to_plain
from ..config import BenchConfig
from ..errors import ConfigError, EdgekitError
from ..formats import check_artifact, known_suffixes
from ..report import Reporter, quiet
from ..timing import latency_stats
from .baselines import STOCK_SOURCE, baseline_label, make_baselines
from .compare import compare
from ..lineage import Lineage, discover, format_of_path_or_none, lineage, source_checkpoint
from .measure import (MeasureContext, OtherWork, bench_one, blank_row, environment, load_average, pin_threads,
                      time_batch1_interleaved)
from .row import BenchRow
from .render import (BENCH_FORMAT, BenchRun, TABLE_COLUMNS, contention_notes, int8_slowdown_reason, load_run,
                     markdown_text, render, summary, summary_lines, table_rows, write_outputs)
from .render import annotate as _annotate

__all__ = ["BENCH_FORMAT", "BenchRow", "BenchRun", "Lineage", "STOCK_SOURCE", "baseline_label", "bench", "compare",
           "contention_notes", "discover", "environment", "int8_slowdown_reason", "latency_stats", "lineage",
           "load_run", "make_baselines", "markdown_text", "render", "source_checkpoint", "summary", "summary_lines",
           "write_outputs"]


def bench(artifacts: Iterable[Path], config: BenchConfig, reporter: Reporter = quiet,
          directory: Path | None = None, out: Path | None = None, notes: Iterable[str] = ()) -> BenchRun:
    """Measure every artifact with every runtime that can read it; write the result files if `out` is given."""
    load_before = load_average()  # before baselines and measurement add this process's own load
    other_work = OtherWork()
    from ..artifacts import check_writable_dir
    from ..calibrate import read_definition

    config.validate()
    if out is not None:  # a bench takes minutes: an unwritable --out is refused before it, not after
        check_writable_dir(Path(out).parent, create=False)
    if config.baselines:
        check_writable_dir(config.baseline_dir, create=False)
        if config.calibration:
            read_definition(config.calibration)
    paths = [Path(p) for p in artifacts]
    # A missing or damaged file among others becomes an error row; when every file named is one and
    # there is no --dir, nothing could run, so the first is refused now, before any work.
    failures = []
    for path in paths:
        try:
            check_artifact(path)
        except EdgekitError as error:
            failures.append(error)
    if paths and len(failures) == len(paths) and directory is None:
        raise failures[0]
    if directory is not None:
        paths += discover(Path(directory))
    unique, seen = [], set()
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    skipped: list[BenchRow] = []
    if config.baselines:
        made, skipped = make_baselines(unique, config, reporter)
        for path in made:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                unique.append(path)
    if not unique:
        raise ConfigError("no artifacts to bench", "pass artifact files or --dir artifacts/")
    pin_threads(config.threads)
    env = environment(config.threads)
    env["load_average_start"] = load_before
    ctx = MeasureContext(config, reporter)
    rows = list(skipped)
    jobs = []
    for path in unique:
        fmt = format_of_path_or_none(path)
        if fmt is None:
            row = blank_row(path, "?", "?")
            row.why = f"unknown file type (known suffixes: {known_suffixes()})"
            rows.append(row)
            continue
        jobs += [(path, fmt, runtime) for runtime in fmt.all_runtimes()]
    with reporter.progress("bench", total=len(jobs)) as progress:
        for path, fmt, runtime in jobs:
            row = bench_one(path, fmt, runtime, ctx, baseline_label(path, fmt))
            rows.append(row)
            progress.advance(1, artifact=path.name, runtime=runtime.name, status=row.status)
    time_batch1_interleaved(ctx.pending_latency, config, reporter)
    ctx.pending_latency.clear()  # the runners (sessions, interpreters) are released with it
    env["load_average_end"] = load_average()
    env["other_work_cores"] = other_work.cores()
    _annotate(rows, env)
    protocol = {k: v for k, v in to_plain(config).items() if k not in ("data",)}
    if config.data is not None:
        protocol["data_override"] = to_plain(config.data)
    result = BenchRun(rows, env, protocol, notes=list(notes))
    reporter.table("bench", TABLE_COLUMNS, table_rows(rows))
    if out is not None:
        result.outputs = write_outputs(result, Path(out))
        reporter.info("bench: wrote " + ", ".join(str(p) for p in result.outputs.values()))
    return result
