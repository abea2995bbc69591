"""Bench rendering: the result files (JSON, CSV, Markdown, Pareto PNG), the summary and the notes.

The notes say what a reader needs to trust a row: an int8 row slower than its fp32 sibling and
why (from the file's census, the format's own reasons and the CPU's flags), and whether other
work shared the CPU (other processes' CPU time over the run; for older runs, the load before the
bench started, less the bench's own threads after).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import (INT8_DOT_PRODUCT_FLAGS, Manifest, atomic_write_text, current_command, read_manifest, to_plain,
                         write_report_manifests)
from ..errors import ConfigError, EdgekitError
from ..formats import FORMATS
from ..report import markdown_table
from .baselines import STOCK_SOURCE
from .row import BenchRow, Int8Slowdown

BENCH_FORMAT = "edgekit-bench/1"


@dataclass
class BenchRun:
    rows: list[BenchRow]
    environment: dict[str, Any]
    protocol: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # about the run as a whole (e.g. artifacts not made)
    created: str | None = None  # when it was measured (None: now); a re-render keeps the run's own

    def to_dict(self) -> dict[str, Any]:
        created = self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return {"format": BENCH_FORMAT, "created": created,
                "environment": self.environment, "protocol": self.protocol, "notes": self.notes, "rows": [row.to_json() for row in self.rows]}


# ---- notes: int8 slower than fp32, with the reason where known --------------------------------


def int8_slowdown_reason(row: BenchRow, env: dict[str, Any]) -> str:
    """Every reason found, the format's own first; a shared CPU is added as a caveat, never in their place."""
    reasons = []
    flags = set(env.get("cpu_flags") or [])
    if not flags & INT8_DOT_PRODUCT_FLAGS:
        reasons.append("this CPU has no VNNI/AMX int8 dot-product instructions, so int8 convolutions are emulated "
                       "with wider multiplies")
    fmt = FORMATS.get(row.format)
    with_reasons = getattr(fmt.module(), "int8_slowdown_reasons", None) if fmt is not None else None
    if with_reasons is not None:
        reasons += with_reasons(runtime=row.runtime, manifest_config=row.manifest_config, census=row.census)
    if contention_notes(env):
        reasons.append("also, the CPU was shared while it ran (see the Shared CPU note): a thread pool that waits "
                       "for a descheduled thread at every op (torch's OpenMP) loses the most; re-run on a quiet "
                       "machine or with fewer threads before drawing conclusions")
    return "; ".join(reasons) or "reason not determined from the file and CPU flags"


def annotate(rows: list[BenchRow], env: dict[str, Any]) -> None:
    """Compare each int8 row with the fp32 row of the same format and runtime made from the same
    float model (its nearest torch source: the fp32 root, or the pruned checkpoint)."""
    fp32 = {(r.format, r.runtime, r.source): r for r in rows
            if r.status == "ok" and (r.precision or "").startswith("fp32")}
    for row in rows:
        if row.status != "ok" or row.latency_ms is None or "int8" not in (row.precision or ""):
            continue
        ref = fp32.get((row.format, row.runtime, row.source))
        if ref is None or ref.latency_ms is None:
            continue
        if row.latency_ms.p50 > ref.latency_ms.p50:
            row.int8_slower_than_fp32 = Int8Slowdown(fp32_artifact=ref.artifact, fp32_p50_ms=ref.latency_ms.p50,
                                                     reason=int8_slowdown_reason(row, env))


# ---- tables and files --------------------------------------------------------------------------


TABLE_COLUMNS = ["artifact", "runtime", "precision", "acc %", "agree root %", "p50 ms", "p90 ms", "p99 ms",
                 "mean ms (95% CI)", "best img/s (batch)", "size MB", "MMACs", "status"]


def fmt_value(value: float | None, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


def _best_throughput(row: BenchRow) -> str:
    best = [(v.images_per_s, b) for b, v in row.throughput.items() if v.images_per_s]
    if not best:
        return ""
    value, batch = max(best)
    return f"{value:,.0f} ({batch})"


def _label(row: BenchRow) -> str:
    name = Path(row.artifact).name
    return f"{name} [{row.baseline}]" if row.baseline else name


def _short(row: BenchRow, limit: int = 60) -> str:
    why = row.why or ""
    return f"{row.status}: {why[:limit]}{'...' if len(why) > limit else ''}"


def table_rows(rows: list[BenchRow], markdown: bool = False) -> list[list[Any]]:
    out = []
    for r in rows:
        lat = r.latency_ms
        out.append([
            _label(r), r.runtime, r.precision or "",
            fmt_value(r.accuracy and 100 * r.accuracy, ".2f"),
            fmt_value(r.agreement_root and 100 * r.agreement_root, ".2f"),
            fmt_value(lat and lat.p50, ".3f"), fmt_value(lat and lat.p90, ".3f"), fmt_value(lat and lat.p99, ".3f"),
            f"{lat.mean:.3f} ({lat.ci95[0]:.3f}-{lat.ci95[1]:.3f})" if lat else "",
            _best_throughput(r),
            fmt_value(r.size_bytes and r.size_bytes / 1e6, ".3f"),
            fmt_value(r.macs and r.macs / 1e6, ".1f"),
            r.status if r.status == "ok" else f"{r.status} (see notes)" if markdown else _short(r),
        ])
    return out


CSV_COLUMNS = ["artifact", "baseline", "format", "runtime", "runner", "kind", "precision", "status", "why",
               "accuracy", "test_images", "val_accuracy", "val_images", "agreement_root", "agreement_source", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "mean_ci95_low_ms", "mean_ci95_high_ms", "timed_runs", "size_bytes", "params", "macs",
               "load_average_1m", "root", "source"]


def csv_text(run: BenchRun) -> str:
    batches = [str(b) for b in run.protocol.get("batches", [])]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS + [f"images_per_s_b{b}" for b in batches])
    for r in run.rows:
        lat = r.latency_ms
        derived = {"p50_ms": lat and lat.p50, "p90_ms": lat and lat.p90, "p99_ms": lat and lat.p99,
                   "mean_ms": lat and lat.mean, "mean_ci95_low_ms": lat and lat.ci95[0],
                   "mean_ci95_high_ms": lat and lat.ci95[1], "timed_runs": lat and lat.runs,
                   "load_average_1m": r.load_average[0] if r.load_average else None}
        writer.writerow([derived[c] if c in derived else getattr(r, c) for c in CSV_COLUMNS] +
                        [r.throughput[b].images_per_s if b in r.throughput else None for b in batches])
    return buffer.getvalue()


def markdown_text(run: BenchRun, title: str = "edgekit bench") -> str:
    env, protocol = run.environment, run.protocol
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    gpu = env.get("gpu")
    lines = [f"# {title}", "",
             "## Environment", "",
             markdown_table(["", ""], [
                 ["CPU", env.get("cpu")],
                 ["CPU flags (of interest)", " ".join(env.get("cpu_flags") or []) or "none found"],
                 ["cores (usable)", f"{env.get('cores')} ({env.get('cores_usable')})"],
                 ["threads per runtime", env.get("threads")],
                 ["OS", env.get("os")],
                 ["GPU", f"{gpu['name']} (driver {gpu['driver']})" if gpu else "none"],
                 ["libraries", versions],
                 ["load average (1/5/15 min) at start", env.get("load_average_start")],
                 ["load average at end", env.get("load_average_end")],
                 *([["other processes' CPU while it ran", f"{env['other_work_cores']:.2f} cores (measured)"]]
                   if env.get("other_work_cores") is not None else []),
             ]),
             _load_paragraph(env), "",
             "## Protocol", "",
             f"- accuracy: the test split of the data each artifact's lineage was trained on "
             f"({'first ' + str(protocol.get('test_limit')) + ' images' if protocol.get('test_limit') else 'all images'});"
             " agreement = top-1 agreement with the fp32 root checkpoint on the same images",
             f"- batch-1 latency: {protocol.get('warmup')} warm-up calls, then at least {protocol.get('runs')} timed "
             f"calls and at least {protocol.get('min_seconds')} s; p50/p90/p99, mean with a bootstrap 95 % CI "
             "(timed calls are not independent, so the CI describes this sample); " + _rounds_text(protocol),
             f"- throughput: batches {protocol.get('batches')}, {protocol.get('sweep_seconds')} s each (at least 3 calls)",
             f"- threads: {protocol.get('threads')} for every runtime (torch.set_num_threads, ONNX Runtime "
             "intra-op threads, TFLite num_threads)",
             "- rows marked [baseline] are what a user would do without edgekit, measured in the same run", "",
             "## Results", "",
             markdown_table(TABLE_COLUMNS, table_rows(run.rows, markdown=True)), ""]
    lines += summary_lines(run.rows)
    sweep = [[_label(r), r.runtime] + [fmt_value(r.throughput[str(b)].images_per_s if str(b) in r.throughput else None,
                                                 ",.0f") for b in protocol.get("batches", [])]
             for r in run.rows if r.status == "ok"]
    if sweep:
        lines += ["## Throughput (images/s) by batch size", "",
                  markdown_table(["artifact", "runtime"] + [f"batch {b}" for b in protocol.get("batches", [])], sweep), ""]
    notes = []
    # One note per (runtime, reason) for runtimes missing here, instead of one per file.
    unavailable: dict[tuple[str, str], list[str]] = {}
    lineage_ends: dict[str, None] = {}
    for r in run.rows:
        slow = r.int8_slower_than_fp32
        if slow and r.latency_ms:
            notes.append(f"- **{_label(r)}** ({r.runtime}) is int8 but slower than fp32 "
                         f"{Path(slow.fp32_artifact).name} ({r.latency_ms.p50:.3f} ms vs "
                         f"{slow.fp32_p50_ms:.3f} ms p50): {slow.reason}.")
        if r.status == "unavailable":
            unavailable.setdefault((r.runtime, r.why or ""), []).append(Path(r.artifact).name)
        elif r.status != "ok":
            notes.append(f"- **{_label(r)}** ({r.runtime}): {r.status}: {r.why}")
        for note in r.notes:
            if "lineage stops there" in note:  # the same for every row of a lineage: said once below
                lineage_ends.setdefault(note, None)
                continue
            notes.append(f"- {_label(r)} ({r.runtime}): {note}")
    notes += [f"- every row of that lineage: {note}" for note in lineage_ends]
    for (runtime, why), names in unavailable.items():
        notes.append(f"- **{runtime}** did not run ({', '.join(names)}): {why}")
    notes = [f"- {note}" for note in run.notes] + contention_notes(env) + notes
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


WINNER_MARGINS_PT = (1.0, 0.5)  # "fastest within N points of fp32", each reported


def _p50(row: BenchRow) -> float:
    assert row.latency_ms is not None, "only measured rows are ranked"
    return row.latency_ms.p50


def summary(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """Per fp32 root: the fastest artifact within 1 (and 0.5) points of its accuracy, against the stock paths.

    Winners are chosen on the validation split when every candidate row has it, and reported on
    the test split, so the test split never picks what it then scores."""
    ok = [r for r in rows if r.status == "ok" and r.latency_ms and r.accuracy is not None]
    out = []
    for root_row in [r for r in ok if r.baseline == STOCK_SOURCE]:
        family = [r for r in ok if r.root == root_row.root]
        ours = [r for r in family if not r.baseline]
        on_validation = all(r.val_accuracy is not None for r in [root_row, *ours])
        stock_int8 = [r for r in family if r.baseline and "int8" in (r.precision or "")]
        unpruned_int8 = [r for r in ours if "int8" in (r.precision or "") and r.source == root_row.root]

        def scored(r: BenchRow) -> float:
            value = r.val_accuracy if on_validation else r.accuracy
            assert value is not None, "ok rows carry the split they are chosen on"
            return value

        def fastest(candidates: list[BenchRow]) -> BenchRow | None:
            return min(candidates, key=_p50) if candidates else None

        def within(points: float) -> list[BenchRow]:
            # Inclusive: accuracies are counts over a split, so compare with a tolerance far below
            # one image rather than trust float rounding at exactly the margin.
            return [r for r in ours if scored(r) >= scored(root_row) - points / 100 - 1e-9]

        out.append({"root": root_row.root, "fp32_accuracy": root_row.accuracy,
                    "fp32_val_accuracy": root_row.val_accuracy,
                    "chosen_on": "validation" if on_validation else "test (no validation split measured)",
                    "torch_eager_p50_ms": _p50(root_row),
                    "best_within_1pt": fastest(within(1.0)), "best_within_0.5pt": fastest(within(0.5)),
                    "best_stock_int8": fastest(stock_int8), "best_edgekit_unpruned_int8": fastest(unpruned_int8)})
    return out


def summary_lines(rows: list[BenchRow]) -> list[str]:
    lines = []
    for entry in summary(rows):
        def describe(r: BenchRow | None) -> str:
            if r is None:
                return "none measured"
            val = f", val {100 * r.val_accuracy:.2f} %" if r.val_accuracy is not None else ""
            return f"{_label(r)} on {r.runtime}: {_p50(r):.3f} ms p50, test {100 * (r.accuracy or 0.0):.2f} %{val}"

        stock, ours = entry["best_stock_int8"], entry["best_edgekit_unpruned_int8"]
        lines += [f"## Summary for {Path(entry['root']).name} (fp32 test accuracy {100 * entry['fp32_accuracy']:.2f} %, "
                  f"torch eager {entry['torch_eager_p50_ms']:.3f} ms p50)", "",
                  f"Winners chosen on the {entry['chosen_on']} split, accuracies reported on the test split.", ""]
        for points in WINNER_MARGINS_PT:
            best = entry[f"best_within_{points:g}pt"]
            lines.append(f"- fastest edgekit artifact within {points:g} point of fp32: {describe(best)}")
            if best:
                lines.append(f"  - speed-up at batch 1: {entry['torch_eager_p50_ms'] / _p50(best):.1f}x over "
                             "torch eager fp32" + (f", {_p50(stock) / _p50(best):.2f}x over "
                                                   "the fastest stock int8" if stock else ""))
        lines += [f"- fastest stock int8 (ORT quantize_static / TFLite converter defaults): {describe(stock)}",
                  f"- fastest edgekit int8 of the unpruned model: {describe(ours)}"]
        if ours and stock:
            lines.append(f"- edgekit unpruned int8 vs fastest stock int8: "
                         f"{_p50(stock) / _p50(ours):.2f}x (above 1 = edgekit faster)")
        lines.append("")
    return lines


def _rounds_text(protocol: dict[str, Any]) -> str:
    rounds = protocol.get("latency_rounds", 1)  # runs from before the option timed each row alone
    if rounds > 1:
        return (f"every row timed after all accuracy passes, together, in {rounds} alternating rounds "
                "(a drift in the machine's speed lands on all rows alike)")
    return "each row timed alone, right after its accuracy pass (rows compared across minutes)"


def _load_paragraph(env: dict[str, Any]) -> str:
    """How to read the load figures: the load average counts this run's own threads too, so only a
    run that measured other processes' CPU time can say by itself whether the CPU was shared."""
    if env.get("other_work_cores") is not None:
        return ("The load average counts every process on the machine, this run's own threads included (and work "
                "that stopped shortly before it, in the start reading); what other processes used while it ran is "
                "measured from their CPU time (row above), and a Shared CPU note below says when that mattered.")
    return ("The load average counts every process on the machine, this run's own threads included. Above the "
            f"run's {env.get('threads')} threads on a machine with {env.get('cores')} cores, other work shared the CPU "
            "while these numbers were taken: compare rows within this run (each row's 1-minute load is in the "
            "JSON/CSV), not against other machines or runs.")


def other_load(env: dict[str, Any]) -> float | None:
    """The cores other work took while the bench ran (measure.OtherWork) where the run recorded it.
    Runs from before it fall back on the 1-minute load average: before the bench started, and at its
    end less the bench's own threads (each runnable thread of this process adds ~1 to the load it
    reads); that reading still holds work stopped shortly before the bench."""
    if env.get("other_work_cores") is not None:
        return env["other_work_cores"]
    start, end, threads = env.get("load_average_start"), env.get("load_average_end"), env.get("threads") or 0
    candidates = []
    if start:
        candidates.append(start[0])
    if end:
        candidates.append(max(0.0, end[0] - threads))
    return max(candidates) if candidates else None


# A 1-minute load average reads a few tenths on an idle machine (kernel threads, the shell that
# started the bench); less than half a core of other work is not contention worth a note.
LOAD_SLACK = 0.5


def contention_notes(env: dict[str, Any]) -> list[str]:
    """Say when other work plus the run's threads exceeded the cores: the numbers then measure the
    neighbours as much as the model (OpenMP pools such as torch's suffer most)."""
    cores, threads = env.get("cores_usable") or env.get("cores"), env.get("threads")
    busiest = other_load(env)
    if busiest is None or not cores or not threads or busiest + threads <= cores + LOAD_SLACK:
        return []
    measured = (f"other processes used {busiest:.1f} of {cores} cores on average while it ran"
                if env.get("other_work_cores") is not None else
                f"other processes kept a 1-minute load average of {busiest:.1f} on {cores} cores")
    return [f"- **Shared CPU**: {measured} "
            f"(the bench's own {threads} threads not counted) while each runtime used {threads} threads, so "
            "runtimes competed with other processes for cores. Symptoms in this table: p90/p99 near a scheduler "
            "time slice and, worst, torch eager, whose OpenMP threads wait for each other at every op when one of "
            "them is descheduled. Compare rows within the run with this in mind, and prefer a quiet machine "
            "or fewer threads for absolute numbers."]


def render(json_path: Path, out: Path | None = None) -> dict[str, Path]:
    """Re-write the CSV, Markdown and PNG (and the JSON) from a bench JSON, e.g. after a report change."""
    data = load_run(json_path)
    rows = [BenchRow.from_json(row, str(json_path)) for row in data["rows"]]
    run = BenchRun(rows, data["environment"], data["protocol"], notes=data.get("notes", []), created=data.get("created"))
    target = Path(out) if out else Path(json_path).with_suffix("")
    measured = None
    with contextlib.suppress(EdgekitError):
        measured = read_manifest(json_path)
    return write_outputs(run, target, measured)


def write_outputs(run: BenchRun, out: Path, measured: dict[str, Any] | None = None) -> dict[str, Path]:
    """<out>.json (everything), .csv, .md and the Pareto .png, each with a manifest. `measured`: the
    manifest of the run these files re-render, whose command, libraries, machine and date they keep
    (the re-render is recorded beside them), so the manifests still say what measured the figures."""
    from ..report import plot_pareto

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: out.with_name(out.name + f".{ext}") for ext in ("json", "csv", "md", "png")}
    atomic_write_text(paths["json"], json.dumps(to_plain(run.to_dict()), indent=2) + "\n")
    atomic_write_text(paths["csv"], csv_text(run))
    atomic_write_text(paths["md"], markdown_text(run, f"edgekit bench: {out.name}"))
    points = [{"label": f"{Path(r.artifact).name} ({r.runtime})" + (" [stock]" if r.baseline else ""), "latency_ms": _p50(r),
               "accuracy": r.accuracy, "size_bytes": r.size_bytes, "baseline": bool(r.baseline)}
              for r in run.rows if r.status == "ok" and r.latency_ms]
    plot_pareto(points, paths["png"], title=f"accuracy vs batch-1 p50 latency ({run.environment.get('threads')} threads, "
                                            f"{run.environment.get('cpu')})")
    ok = sum(r.status == "ok" for r in run.rows)
    metrics = {"rows": len(run.rows), "ok": ok, "failed": len(run.rows) - ok}
    manifest = Manifest(kind="bench", format="json", precision="n/a", config=run.protocol,
                        seed=run.protocol.get("seed"), metrics=metrics, extra={"environment": run.environment})
    if measured is not None:
        rendered = {"command": current_command(), "created": manifest.created}
        manifest.command = measured.get("command") or ""
        manifest.extra["rendered"] = rendered
        for key in ("versions", "machine", "created"):
            if measured.get(key):
                setattr(manifest, key, measured[key])
    write_report_manifests(paths, manifest)
    return paths


def load_run(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"bench result not found: {path}", "pass a .json written by `edgekit bench`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} as a bench result: not complete JSON (truncated, edited, or another file)",
                          "pass a .json written by `edgekit bench`") from exc
    if not isinstance(data, dict) or data.get("format") != BENCH_FORMAT:
        raise ConfigError(f"{path} has no edgekit bench format entry, so it cannot be read as a bench result",
                          "pass a .json written by `edgekit bench`")
    if not isinstance(data.get("rows"), list) or not all(isinstance(r, dict) for r in data["rows"]):
        raise ConfigError(f"{path}: its 'rows' entry is missing or damaged", "pass a .json written by `edgekit bench`")
    return data
