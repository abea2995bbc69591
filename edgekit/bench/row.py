"""One bench row, typed: what measuring one (artifact, runtime) found, and its place in the result JSON.

The result JSON is a file format (edgekit-bench/1), so `BenchRow.to_json` is the one way a row
becomes JSON and writes the keys a row always had, in their order. Five entries are written only
once there is something to say (RECORDED_WHEN_MEASURED): a row that never reached the measurement
(a runtime not installed, a baseline not made) has no data, no load at its end, and so on.
`BenchRow.from_json` reads a row back for `edgekit bench --compare` and `bench.render.render`.
tests/test_bench.py holds the keys against the committed benchmarks/results/bench-cpu.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import ConfigError

# ok: measured; error: could not be measured (the why says what to fix); unavailable: the runtime
# is not on this machine; skipped: a stock baseline that was not made
RowStatus = Literal["ok", "error", "unavailable", "skipped"]
ROW_STATUSES: tuple[str, ...] = ("ok", "error", "unavailable", "skipped")


@dataclass
class Latency:
    """Batch-1 latency in milliseconds, as edgekit.timing.latency_stats measures it."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    runs: int
    seconds: float  # all timed calls together
    ci95: list[float]  # the mean's bootstrap 95 % interval: [low, high]


@dataclass
class Throughput:
    """Images per second at one batch size, or why the file refused that batch."""

    images_per_s: float | None
    ms_per_batch_p50: float | None = None
    calls: int | None = None
    why: str | None = None  # set when the batch was refused; the measured entries are then None

    def to_json(self) -> dict[str, Any]:
        if self.why is not None:
            return {"images_per_s": self.images_per_s, "why": self.why}
        return {"images_per_s": self.images_per_s, "ms_per_batch_p50": self.ms_per_batch_p50, "calls": self.calls}


@dataclass
class Int8Slowdown:
    """An int8 row slower than the fp32 row of the same format, runtime and float model, and why."""

    fp32_artifact: str
    fp32_p50_ms: float
    reason: str


@dataclass
class BenchRow:
    """One (artifact, runtime) measurement. Field order is the JSON's key order."""

    artifact: str
    format: str  # the format table's name, "-" for a baseline not made, "?" for an unknown suffix
    runtime: str
    runner: str | None = None  # the runner's own name (e.g. "torch-int8 (qnnpack)")
    kind: str | None = None  # from the artifact's manifest
    precision: str | None = None  # from the artifact's manifest
    baseline: str | None = None  # the stock path this row stands for; None for edgekit's own files
    status: RowStatus = "error"
    why: str | None = None  # one line, for every status but ok
    accuracy: float | None = None  # top-1 on the test split
    test_images: int | None = None
    val_accuracy: float | None = None  # top-1 on the validation split, where winners are chosen
    val_images: int | None = None
    agreement_root: float | None = None  # top-1 agreement with the fp32 root checkpoint
    agreement_source: float | None = None  # ... and with the nearest torch source (e.g. the pruned model)
    root: str | None = None
    source: str | None = None
    latency_ms: Latency | None = None
    throughput: dict[str, Throughput] = field(default_factory=dict)  # by batch size, as a string
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    census: dict[str, Any] | None = None  # what the file holds, in its format module's own layout
    load_average: list[float] | None = None  # 1/5/15-minute load when the row started
    notes: list[str] = field(default_factory=list)
    # written only once set (RECORDED_WHEN_MEASURED)
    manifest_config: dict[str, Any] | None = None  # the config its manifest records
    data: str | None = None  # the data the accuracy was measured on
    diff_root: dict[str, Any] | None = None  # flips against the root (edgekit.flips.diff_summary_line), --diff
    load_average_end: list[float] | None = None
    int8_slower_than_fp32: Int8Slowdown | None = None  # set by the bench's annotate step

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if value is None and name in RECORDED_WHEN_MEASURED:
                continue
            out[name] = value
        out["throughput"] = {batch: entry.to_json() for batch, entry in self.throughput.items()}
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "a bench result") -> BenchRow:
        """A row as `to_json` wrote it; anything else is refused in one line naming `where`."""

        def damaged(what: str) -> ConfigError:
            return ConfigError(f"a row of {where} is damaged: {what}", "pass a .json written by `edgekit bench`, unedited")

        if not isinstance(data, dict):
            raise damaged("not an object")
        unknown = set(data) - ROW_FIELDS
        if unknown:
            raise damaged(f"unknown entries {sorted(unknown)}")
        missing = [name for name in ("artifact", "format", "runtime", "status") if not isinstance(data.get(name), str)]
        if missing:
            raise damaged(f"no {', '.join(missing)}")
        if data["status"] not in ROW_STATUSES:
            raise damaged(f"status '{data['status']}' is none of {', '.join(ROW_STATUSES)}")
        values = dict(data)
        try:
            if values.get("latency_ms") is not None:
                values["latency_ms"] = Latency(**values["latency_ms"])
            values["throughput"] = {str(b): Throughput(**entry) for b, entry in (values.get("throughput") or {}).items()}
            if values.get("int8_slower_than_fp32") is not None:
                values["int8_slower_than_fp32"] = Int8Slowdown(**values["int8_slower_than_fp32"])
        except (TypeError, AttributeError) as exc:  # an entry edited into another shape
            raise damaged(f"{data['artifact']} ({data['runtime']}): {exc}") from None
        values["notes"] = list(values.get("notes") or [])
        row = cls(**values)
        if row.status == "ok" and (row.latency_ms is None or row.accuracy is None
                                   or not isinstance(row.latency_ms.ci95, list) or len(row.latency_ms.ci95) != 2):
            raise damaged(f"{row.artifact} ({row.runtime}) is ok but has no accuracy or latency")
        return row


ROW_FIELDS = frozenset(f.name for f in fields(BenchRow))
RECORDED_WHEN_MEASURED = frozenset({"manifest_config", "data", "diff_root", "load_average_end", "int8_slower_than_fp32"})
