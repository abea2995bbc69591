"""Bench comparison: per-row deltas of two bench result files (B - A)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report import Reporter, quiet
from .render import fmt_value, load_run
from .row import BenchRow


def _row_key(row: BenchRow) -> tuple[str, str]:
    return Path(row.artifact).name, row.runtime


def _delta(key: tuple[str, str], ra: BenchRow | None, rb: BenchRow | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"artifact": key[0], "runtime": key[1]}
    if ra is None or rb is None:
        entry["status"] = "only in " + ("B" if ra is None else "A")
    elif ra.status != "ok" or rb.status != "ok" or ra.latency_ms is None or rb.latency_ms is None:
        entry["status"] = f"A {ra.status}, B {rb.status}"
    else:  # from_json refuses an ok row without accuracy or latency
        entry["status"] = "ok"
        la, lb = ra.latency_ms, rb.latency_ms
        entry["accuracy_delta_pt"] = 100 * ((rb.accuracy or 0.0) - (ra.accuracy or 0.0))
        entry["p50_a_ms"], entry["p50_b_ms"] = la.p50, lb.p50
        entry["p50_delta_ms"] = lb.p50 - la.p50
        entry["p50_ratio"] = lb.p50 / la.p50 if la.p50 else None
        entry["p99_delta_ms"] = lb.p99 - la.p99
        # Mean CIs that do not overlap are the least a reader should ask before believing a change.
        entry["mean_ci_overlap"] = not (la.ci95[1] < lb.ci95[0] or lb.ci95[1] < la.ci95[0])
        entry["size_delta_bytes"] = (rb.size_bytes or 0) - (ra.size_bytes or 0)
    return entry


def _rows(data: dict[str, Any], path: Path) -> dict[tuple[str, str], BenchRow]:
    rows = (BenchRow.from_json(row, str(path)) for row in data["rows"])
    return {_row_key(row): row for row in rows}


def compare(a_path: Path, b_path: Path, reporter: Reporter = quiet) -> list[dict[str, Any]]:
    """Per-row deltas B - A, rows matched by artifact file name and runtime."""
    a, b = load_run(a_path), load_run(b_path)
    rows_a, rows_b = _rows(a, a_path), _rows(b, b_path)
    result = []
    for key in list(rows_a) + [k for k in rows_b if k not in rows_a]:
        try:
            result.append(_delta(key, rows_a.get(key), rows_b.get(key)))
        except TypeError as exc:  # a number edited into text
            raise ConfigError(f"the row for {key[0]} ({key[1]}) in {a_path} or {b_path} is damaged ({exc!r})",
                              "pass .json files written by `edgekit bench`, unedited") from exc
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    if env_a.get("cpu") != env_b.get("cpu") or env_a.get("threads") != env_b.get("threads"):
        reporter.info(f"compare: different machines or threads (A: {env_a.get('cpu')}, {env_a.get('threads')} threads; "
                      f"B: {env_b.get('cpu')}, {env_b.get('threads')} threads): latency deltas mix machine and model")
    reporter.table(f"compare: B ({Path(b_path).name}) - A ({Path(a_path).name})",
                   ["artifact", "runtime", "acc Δ pt", "p50 A ms", "p50 B ms", "p50 Δ ms", "B/A", "p99 Δ ms",
                    "CIs overlap", "size Δ bytes", "status"],
                   [[e["artifact"], e["runtime"], fmt_value(e.get("accuracy_delta_pt"), "+.2f"), fmt_value(e.get("p50_a_ms"), ".3f"),
                     fmt_value(e.get("p50_b_ms"), ".3f"), fmt_value(e.get("p50_delta_ms"), "+.3f"), fmt_value(e.get("p50_ratio"), ".2f"),
                     fmt_value(e.get("p99_delta_ms"), "+.3f"), "" if "mean_ci_overlap" not in e else str(e["mean_ci_overlap"]),
                     e.get("size_delta_bytes", ""), e["status"]] for e in result])
    return result
