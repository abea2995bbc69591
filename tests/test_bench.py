"""Bench end to end on a tiny model: real ONNX Runtime sessions, real files, no timing assertions."""

from __future__ import annotations

import csv
import json
import os
import shutil
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekit.artifacts import read_manifest
from edgekit.bench import bench, compare, discover, load_run
from edgekit.config import BenchConfig, ExportOptions
from edgekit.errors import ConfigError
from edgekit.export import export_artifact
from edgekit.model import load_checkpoint
from edgekit.train import evaluate

TEST_LIMIT = 64


def quick_config(**overrides) -> BenchConfig:
    values = dict(threads=1, batches=(1, 2), warmup=2, runs=5, min_seconds=0.0, sweep_seconds=0.0,
                  test_limit=TEST_LIMIT, eval_batch=32)
    values.update(overrides)
    return BenchConfig(**values)


@pytest.fixture(scope="module")
def bench_data(tiny_data_config, tiny_data):
    return tiny_data_config, tiny_data


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_trained):
    """The session's tiny checkpoint (the bench needs a real lineage, not a good model), copied into a
    folder of its own for --dir, and its fp32 ONNX export through edgekit export (real parity gate)."""
    folder = tmp_path_factory.mktemp("bench-artifacts")
    checkpoint = folder / "best.pt"
    shutil.copy(tiny_trained.checkpoint, checkpoint)
    shutil.copy(str(tiny_trained.checkpoint) + ".manifest.json", str(checkpoint) + ".manifest.json")
    onnx = export_artifact(checkpoint, "onnx", "fp32", folder / "model-fp32.onnx",
                           ExportOptions(parity_images=32, dynamic_batch=True)).path
    return folder, checkpoint, onnx


@pytest.fixture(scope="module")
def run(artifacts, tmp_path_factory):
    folder, checkpoint, onnx = artifacts
    out = tmp_path_factory.mktemp("results") / "tiny"
    return bench([checkpoint, onnx], quick_config(), out=out)


def rows_by(run, artifact_name, runtime):
    return [r for r in run.rows if r.artifact.endswith(artifact_name) and r.runtime == runtime]


def test_bench_writes_every_output_with_a_row_per_artifact_and_runtime(run, artifacts):
    folder, checkpoint, onnx = artifacts
    outputs = run.outputs
    assert set(outputs) == {"json", "csv", "md", "png"}
    for path in outputs.values():
        assert path.exists() and path.stat().st_size > 0
        assert read_manifest(path)["kind"].startswith("bench")
    assert outputs["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = load_run(outputs["json"])
    # torch: one runtime; ONNX: ONNX Runtime, plus OpenVINO's row (ran, or says why not).
    assert [(r["format"], r["runtime"]) for r in data["rows"]] == [
        ("torch", "torch-eager"), ("onnx", "onnxruntime"), ("onnx", "openvino")]
    with open(outputs["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert [r["runtime"] for r in table] == ["torch-eager", "onnxruntime", "openvino"]
    assert "images_per_s_b2" in table[0]
    markdown = outputs["md"].read_text()
    assert data["environment"]["cpu"] in markdown and "load average" in markdown
    assert "best.pt" in markdown and "model-fp32.onnx" in markdown
    assert data["protocol"]["latency_rounds"] == BenchConfig.latency_rounds > 1
    assert f"together, in {BenchConfig.latency_rounds} alternating rounds" in markdown
    env = data["environment"]
    assert env["threads"] == 1 and "torch" in env["versions"] and len(env["load_average_start"]) == 3
    if env.get("other_work_cores") is not None:  # measured where /proc/stat exists
        assert f"other processes' CPU while it ran | {env['other_work_cores']:.2f} cores (measured)" in markdown


def test_render_rewrites_the_views_of_a_run_and_keeps_when_it_was_measured(run, tmp_path):
    """After a report change, the committed views are re-rendered from the JSON alone: the same
    table, and the run's own date, not the day it was re-rendered."""
    from edgekit.bench.render import render

    data = load_run(run.outputs["json"])
    again = render(run.outputs["json"], tmp_path / "tiny")
    assert load_run(again["json"])["created"] == data["created"]
    assert again["md"].read_text() == run.outputs["md"].read_text()
    assert again["csv"].read_text() == run.outputs["csv"].read_text()
    # the manifests still name what measured the figures; the re-render is recorded beside it
    measured = read_manifest(run.outputs["json"])
    for path in again.values():
        manifest = read_manifest(path)
        assert (manifest["command"], manifest["machine"], manifest["created"]) == (
            measured["command"], measured["machine"], measured["created"])
        assert "rendered" in manifest["extra"] and "rendered" not in read_manifest(run.outputs[path.suffix[1:]])["extra"]


def test_rows_measure_accuracy_agreement_latency_and_size(run, artifacts, bench_data):
    folder, checkpoint, onnx = artifacts
    tiny_data = bench_data[1]
    (torch_row,) = rows_by(run, "best.pt", "torch-eager")
    (ort_row,) = rows_by(run, "model-fp32.onnx", "onnxruntime")
    expected = evaluate(load_checkpoint(checkpoint).build(), tiny_data.test_x[:TEST_LIMIT],
                        tiny_data.test_y[:TEST_LIMIT])["accuracy"]
    assert torch_row.status == "ok" and torch_row.accuracy == pytest.approx(expected)
    assert torch_row.test_images == TEST_LIMIT
    assert torch_row.agreement_root == 1.0  # the root against itself
    assert torch_row.baseline == "stock torch eager fp32"
    assert ort_row.status == "ok" and ort_row.agreement_root >= 0.95
    assert ort_row.root == str(checkpoint) and ort_row.source == str(checkpoint)
    assert ort_row.params == torch_row.params > 0 and ort_row.macs == torch_row.macs > 0
    assert ort_row.census["weights_by_dtype"]
    for row in (torch_row, ort_row):
        latency = row.latency_ms
        assert latency.runs >= 5
        assert latency.p50 <= latency.p90 <= latency.p99
        assert set(row.throughput) == {"1", "2"}
        assert all(v.images_per_s > 0 for v in row.throughput.values())
        assert row.size_bytes == (checkpoint if row is torch_row else onnx).stat().st_size


COMMITTED_RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench-cpu.json"


def test_row_json_keeps_the_committed_layout(run):
    """A row's JSON is a file format: the keys (and their order) of the committed bench-cpu.json rows."""
    from edgekit.bench.row import RECORDED_WHEN_MEASURED, ROW_FIELDS, BenchRow

    def always(row):  # the keys every row of its status writes, whatever was measured
        return tuple(key for key in row if key not in RECORDED_WHEN_MEASURED)

    committed = json.loads(COMMITTED_RESULT.read_text())["rows"]
    layouts: dict[str, set[tuple[str, ...]]] = {}
    for row in committed:
        layouts.setdefault(row["status"], set()).add(always(row))
    written = json.loads(run.outputs["json"].read_text())["rows"]
    assert written == [row.to_json() for row in run.rows]  # the file holds exactly what to_json gives
    assert {row["status"] for row in written} >= {"ok"}
    for row in written:
        assert always(row) in layouts[row["status"]], (row["artifact"], row["runtime"], list(row))
    # none the committed rows show that the dataclass lost; the fields they lack are only those a
    # run records when it measured them (an int8 file slower than its fp32 one, say)
    shown = {key for row in committed for key in row}
    assert shown <= ROW_FIELDS and ROW_FIELDS - shown <= RECORDED_WHEN_MEASURED, ROW_FIELDS - shown
    for row in committed:  # read back and written again: the same entries, values and order
        assert list(BenchRow.from_json(row).to_json().items()) == list(row.items())


# A runtime module of the kind the format table names (load_runner, unavailable_reason), whose
# runner has a genuine bug: a lookup of a key it never stored.
BUGGY_RUNTIME = """
from edgekit.formats.torch import load_runner as load_torch_runner


def unavailable_reason():
    return None


class BuggyRunner:
    name = "buggy"

    def __init__(self, inner):
        self.inner, self.scales = inner, {}

    def predict(self, batch):
        return self.inner.predict(batch) * self.scales["temperature"]


def load_runner(path, threads=None):
    return BuggyRunner(load_torch_runner(path, threads))
"""


# A runtime module that reads the checkpoint with the real torch runner and logs each call's batch
# size per runner; its runners named "refuses-one" reject single images as an engine whose
# optimisation profile starts above batch 1 does.
LOGGING_RUNTIME = """
from edgekit.errors import ConfigError
from edgekit.formats.torch import load_runner as load_torch_runner

CALLS = []
LOADED = []


def unavailable_reason():
    return None


class LoggingRunner:
    name = "logging"

    def __init__(self, inner, label):
        self.inner, self.label = inner, label

    def predict(self, batch):
        if self.label == "refuses-one" and len(batch) == 1:
            raise ConfigError("this file takes batches of 2 or more", "bench it with --batches 2")
        CALLS.append((self.label, len(batch)))
        return self.inner.predict(batch)


def load_runner(path, threads=None):
    LOADED.append(path)
    return LoggingRunner(load_torch_runner(path, threads), NEXT_LABELS.pop(0))


NEXT_LABELS = []
"""


def test_rows_are_timed_together_in_alternating_rounds_after_every_accuracy_pass(artifacts, tmp_path, monkeypatch):
    import importlib

    from edgekit.bench.measure import MeasureContext, bench_one, time_batch1_interleaved
    from edgekit.formats import SOURCE_FORMAT, Runtime
    from edgekit.report import quiet

    folder, checkpoint, onnx = artifacts
    (tmp_path / "edgekit_test_logging_runtime.py").write_text(LOGGING_RUNTIME)
    monkeypatch.syspath_prepend(str(tmp_path))
    logged = importlib.import_module("edgekit_test_logging_runtime")
    runtime = Runtime("logging", "edgekit_test_logging_runtime")
    config = quick_config(batches=(2,), warmup=1, runs=6, latency_rounds=3)
    ctx = MeasureContext(config, quiet)
    logged.NEXT_LABELS[:] = ["a", "b", "refuses-one"]
    rows = [bench_one(checkpoint, SOURCE_FORMAT, runtime, ctx, None) for _ in range(3)]
    assert [r.status for r in rows] == ["ok"] * 3 and all(r.latency_ms is None for r in rows)
    assert all(size > 1 for _, size in logged.CALLS)  # accuracy and the batch-2 sweep only, so far
    logged.CALLS.clear()
    time_batch1_interleaved(ctx.pending_latency, config, quiet)
    timed = [label for label, size in logged.CALLS if size == 1]
    # warm-up of each runner alone, then 3 rounds of 2 calls each, a's before b's in every round
    assert timed == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert rows[0].latency_ms.runs == rows[1].latency_ms.runs == 6
    assert rows[2].status == "error" and "batch-1 timing: this file takes batches of 2" in rows[2].why
    assert rows[2].latency_ms is None and rows[0].status == rows[1].status == "ok"

    # one round: each row timed alone, right after its own accuracy pass, nothing left pending
    single = MeasureContext(quick_config(batches=(2,), warmup=1, runs=4, latency_rounds=1), quiet)
    logged.NEXT_LABELS[:] = ["c"]
    row = bench_one(checkpoint, SOURCE_FORMAT, runtime, single, None)
    assert row.status == "ok" and row.latency_ms.runs == 4 and not single.pending_latency


def test_a_bug_inside_a_runner_raises_instead_of_becoming_an_error_row(artifacts, tmp_path, monkeypatch):
    from edgekit.bench.measure import MeasureContext, bench_one
    from edgekit.formats import SOURCE_FORMAT, Runtime
    from edgekit.report import quiet

    folder, checkpoint, onnx = artifacts
    (tmp_path / "edgekit_test_buggy_runtime.py").write_text(BUGGY_RUNTIME)
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = MeasureContext(quick_config(batches=(1,)), quiet)
    with pytest.raises(KeyError, match="temperature"):
        bench_one(checkpoint, SOURCE_FORMAT, Runtime("buggy", "edgekit_test_buggy_runtime"), ctx, None)


def test_a_runtime_package_that_does_not_import_is_unavailable_but_a_broken_edgekit_import_raises(
        artifacts, tmp_path, monkeypatch):
    from edgekit.bench.measure import MeasureContext, bench_one
    from edgekit.formats import SOURCE_FORMAT, Runtime
    from edgekit.report import quiet

    folder, checkpoint, onnx = artifacts
    for name, package in (("edgekit_test_absent_runtime", "edgekit_test_package_not_installed"),
                          ("edgekit_test_broken_runtime", "edgekit.no_such_module")):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
            def unavailable_reason():
                import {package}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = MeasureContext(quick_config(batches=(1,)), quiet)
    row = bench_one(checkpoint, SOURCE_FORMAT, Runtime("absent", "edgekit_test_absent_runtime"), ctx, None)
    assert row.status == "unavailable" and "'edgekit_test_package_not_installed'" in row.why
    with pytest.raises(ImportError):  # edgekit's own module missing is a bug in this build, not a missing extra
        bench_one(checkpoint, SOURCE_FORMAT, Runtime("broken", "edgekit_test_broken_runtime"), ctx, None)


def test_missing_and_corrupt_artifacts_become_error_rows_while_the_rest_complete(artifacts, tmp_path):
    folder, checkpoint, onnx = artifacts
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2048))
    shutil.copy(str(onnx) + ".manifest.json", str(corrupt) + ".manifest.json")
    corrupt_pt = tmp_path / "corrupt.pt"
    corrupt_pt.write_bytes(checkpoint.read_bytes()[:1000])  # truncated zip
    missing = tmp_path / "gone.onnx"
    result = bench([missing, corrupt, corrupt_pt, checkpoint], quick_config(batches=(1,)), out=tmp_path / "r")
    status = {(r.artifact.split("/")[-1], r.runtime): r for r in result.rows}
    assert status[("gone.onnx", "onnxruntime")].status == "error"
    assert "not found" in status[("gone.onnx", "onnxruntime")].why
    assert status[("corrupt.onnx", "onnxruntime")].status == "error"
    assert "cannot load" in status[("corrupt.onnx", "onnxruntime")].why
    assert status[("corrupt.pt", "torch-eager")].status == "error"
    assert status[("best.pt", "torch-eager")].status == "ok"
    markdown = result.outputs["md"].read_text()
    assert "gone.onnx" in markdown and "corrupt.pt" in markdown  # the notes say why


def test_compare_reports_per_row_deltas(run, tmp_path):
    a = run.outputs["json"]
    data = json.loads(a.read_text())
    for row in data["rows"]:
        if row["status"] == "ok":
            row["latency_ms"]["p50"] *= 2
            row["accuracy"] -= 0.01
    data["rows"].append({**data["rows"][0], "artifact": "extra.pt"})
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data))
    deltas = {(d["artifact"], d["runtime"]): d for d in compare(a, b)}
    original = {(r.artifact.split("/")[-1], r.runtime): r for r in run.rows}
    ort = deltas[("model-fp32.onnx", "onnxruntime")]
    p50 = original[("model-fp32.onnx", "onnxruntime")].latency_ms.p50
    assert ort["p50_delta_ms"] == pytest.approx(p50) and ort["p50_ratio"] == pytest.approx(2.0)
    assert ort["accuracy_delta_pt"] == pytest.approx(-1.0)
    assert deltas[("extra.pt", "torch-eager")]["status"] == "only in B"
    from edgekit.formats import openvino

    if openvino.unavailable_reason():  # not runnable here: no delta invented
        assert deltas[("model-fp32.onnx", "openvino")]["status"] != "ok"
    with pytest.raises(ConfigError):
        compare(a, tmp_path / "nope.json")


def test_discover_finds_artifacts_with_manifests_only(artifacts, tmp_path):
    folder, checkpoint, onnx = artifacts
    found = discover(folder)
    assert checkpoint in found and onnx in found
    stray = folder / "stray.onnx"
    shutil.copy(onnx, stray)  # no manifest: not an edgekit artifact
    try:
        assert stray not in discover(folder)
    finally:
        stray.unlink()
    with pytest.raises(ConfigError):
        discover(tmp_path / "missing")


def test_bad_options_are_config_errors(artifacts):
    folder, checkpoint, onnx = artifacts
    with pytest.raises(ConfigError):
        bench([checkpoint], quick_config(threads=0))
    with pytest.raises(ConfigError, match="--latency-rounds"):
        bench([checkpoint], quick_config(latency_rounds=0))
    with pytest.raises(ConfigError):
        bench([], quick_config())


def test_baselines_are_made_from_the_fp32_onnx_and_the_keras_twin_and_measured(artifacts, tmp_path):
    folder, checkpoint, onnx = artifacts
    config = quick_config(batches=(1,), baselines=True, baseline_dir=str(tmp_path / "baselines"))
    result = bench([checkpoint, onnx], config, out=tmp_path / "with-baselines")
    labels = {r.baseline: r for r in result.rows if r.baseline and r.runtime != "openvino"}
    s8_label, u8_label = ("stock ORT quantize_static (QDQ, s8 act., 7-bit weights)",
                          "stock ORT quantize_static (QDQ, u8 act., 7-bit weights)")
    assert set(labels) == {"stock torch eager fp32", s8_label, u8_label, "stock TFLite converter (full-integer defaults)"}
    for label, row in labels.items():
        assert row.status == "ok", (label, row.why)
        assert row.root == str(checkpoint)
    s8 = read_manifest(labels[s8_label].artifact)
    u8 = read_manifest(labels[u8_label].artifact)
    tfl = read_manifest(labels["stock TFLite converter (full-integer defaults)"].artifact)
    assert s8["parent"]["path"] == str(onnx) and tfl["parent"]["path"] == str(checkpoint)
    assert u8["config"]["activation_type"] == "QUInt8"
    # made as edgekit's own int8 files are: 7-bit weights, so no CPU without VNNI computes them wrongly
    from edgekit.formats.onnx import u8s8_pair_bound

    assert s8["config"]["reduce_range"] and u8["config"]["reduce_range"]
    assert u8s8_pair_bound(labels[u8_label].artifact)["fits_int16"]
    # Every baseline saw the same calibration images.
    assert s8["extra"]["calibration"]["pixels_sha256"] == tfl["extra"]["calibration"]["pixels_sha256"]


def test_cli_bench_and_compare(artifacts, tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    folder, checkpoint, onnx = artifacts
    out = tmp_path / "cli"
    runner = CliRunner(env={"COLUMNS": "250"})  # rich wraps to the terminal width
    result = runner.invoke(app, ["bench", str(checkpoint), "--threads", "1", "--batches", "1,2", "--warmup", "1",
                                 "--runs", "3", "--min-seconds", "0", "--sweep-seconds", "0",
                                 "--test-limit", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.json").exists() and (tmp_path / "cli.md").exists()
    result = runner.invoke(app, ["bench", "--compare", str(tmp_path / "cli.json"), str(tmp_path / "cli.json")])
    assert result.exit_code == 0 and "best.pt" in result.output
    markdown = (tmp_path / "cli.md").read_text()
    (tmp_path / "cli.md").write_text("stale view")
    result = runner.invoke(app, ["bench", "--render", str(tmp_path / "cli.json")])
    assert result.exit_code == 0 and (tmp_path / "cli.md").read_text() == markdown
    result = runner.invoke(app, ["bench", "--render", str(tmp_path / "gone.json")])
    assert result.exit_code == 2 and "bench result not found" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["bench", str(checkpoint), "--batches", "1,x"])
    assert result.exit_code == 2 and "--batches" in result.output
    # every file named missing (and no --dir): nothing could run, so it is refused before any work, one
    # line and no result files (one bad file among good ones is an error row instead: the test above)
    result = runner.invoke(app, ["bench", str(tmp_path / "gone.pt"), "--threads", "1", "--batches", "1",
                                 "--runs", "1", "--min-seconds", "0", "--sweep-seconds", "0", "--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and "artifact not found" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "none.json").exists()
    # a file that is there but runs nowhere (no TensorRT here; a GPU's TensorRT cannot read one byte):
    # its error row is written, and the command fails naming why
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"x")
    result = runner.invoke(app, ["bench", str(junk), "--threads", "1", "--batches", "1", "--runs", "1",
                                 "--min-seconds", "0", "--sweep-seconds", "0", "--out", str(tmp_path / "junk")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no row of the bench ran" in result.output and "junk.engine" in result.output
    assert (tmp_path / "junk.json").exists()


def test_a_reference_stored_in_fp16_is_the_stock_torch_eager_row(artifacts, tmp_path):
    # benchmarks/models keeps the reference with fp16 weights (half the bytes); it is rebuilt and run in fp32.
    from edgekit.artifacts import Manifest, parent_ref, write_manifest
    from edgekit.bench import baseline_label
    from edgekit.formats import FORMATS
    from edgekit.model import save_checkpoint

    _, checkpoint, _ = artifacts
    source = load_checkpoint(checkpoint)
    stored = save_checkpoint(tmp_path / "reference.fp16.pt", source.build(), source.classes, source.extra, half=True)
    write_manifest(stored, Manifest(kind="checkpoint", format="torch", precision="fp16 storage (fp32 compute)",
                                    parent=parent_ref(checkpoint)))
    assert all(t.dtype.itemsize == 2 for t in load_checkpoint(stored).state_dict.values() if t.is_floating_point())
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    runner = FORMATS["torch"].module().load_runner(stored)
    assert runner.predict(x).dtype == np.float32
    np.testing.assert_allclose(runner.predict(x), FORMATS["torch"].module().load_runner(checkpoint).predict(x),
                               atol=0.05)
    assert baseline_label(stored, FORMATS["torch"]) == "stock torch eager fp32"
    pruned_like = tmp_path / "pruned.pt"
    shutil.copy(stored, pruned_like)
    write_manifest(pruned_like, Manifest(kind="pruned", format="torch", precision="fp32", parent=parent_ref(stored)))
    assert baseline_label(pruned_like, FORMATS["torch"]) is None


def test_a_root_named_relative_and_recorded_absolute_is_one_root(tmp_path, monkeypatch):
    # compress benchmarks record absolute parent paths; the command line names the same file relative.
    from edgekit.artifacts import Manifest, parent_ref, write_manifest
    from edgekit.bench import lineage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "root.pt").write_bytes(b"root")
    (tmp_path / "child.pt").write_bytes(b"child")
    write_manifest(tmp_path / "child.pt", Manifest(kind="pruned", format="torch", precision="fp32",
                                                   parent=parent_ref((tmp_path / "root.pt").resolve())))
    from pathlib import Path

    assert lineage(Path("child.pt")).root == lineage(Path("root.pt")).root == Path("root.pt")


# ---- the summary's winner rule and the shared-CPU note, on hand-made rows -------------------------


def _row(artifact, p50, test, val, *, root="ref.pt", source="ref.pt", precision="int8", baseline=None):
    from edgekit.bench.row import BenchRow, Latency

    latency = Latency(p50=p50, p90=p50, p99=p50, mean=p50, std=0.0, min=p50, runs=1, seconds=p50 / 1e3, ci95=[p50, p50])
    return BenchRow(artifact=artifact, format="onnx", runtime="onnxruntime", status="ok", latency_ms=latency,
                    accuracy=test, val_accuracy=val, root=root, source=source, precision=precision, baseline=baseline)


def test_summary_picks_winners_on_validation_and_reports_them_on_test():
    from edgekit.bench.baselines import STOCK_SOURCE
    from edgekit.bench.render import summary, summary_lines

    rows = [
        _row("ref.pt", 10.0, 0.900, 0.900, precision="fp32", baseline=STOCK_SOURCE),
        # fastest, and within 1 point on test, but 1.2 points down on validation: not a winner
        _row("pruned-hard.int8.onnx", 1.0, 0.895, 0.888, source="pruned-hard.pt"),
        _row("pruned.int8.onnx", 2.0, 0.880, 0.892, source="pruned.pt"),  # 0.8 down on val: within 1
        _row("ref.int8.onnx", 4.0, 0.899, 0.897),  # 0.3 down on val: within 0.5
        _row("ref.ort-qdq.onnx", 5.0, 0.899, 0.899, baseline="ort-qdq-u8"),
        replace(_row("broken.onnx", 0.5, 0.99, 0.99), status="error"),
    ]
    [entry] = summary(rows)
    assert entry["chosen_on"] == "validation"
    assert entry["best_within_1pt"].artifact == "pruned.int8.onnx"  # though 2 points down on test
    assert entry["best_within_0.5pt"].artifact == "ref.int8.onnx"
    assert entry["best_stock_int8"].artifact == "ref.ort-qdq.onnx"
    assert entry["best_edgekit_unpruned_int8"].artifact == "ref.int8.onnx"
    text = "\n".join(summary_lines(rows))
    assert "chosen on the validation split" in text and "test 88.00 %" in text
    assert "5.0x over torch eager fp32, 2.50x over the fastest stock int8" in text  # 10/2 and 5/2

    # without a validation accuracy on every candidate, the test split decides, and says so
    no_val = [replace(r, val_accuracy=None) for r in rows]
    [entry] = summary(no_val)
    assert entry["chosen_on"].startswith("test")
    assert entry["best_within_1pt"].artifact == "pruned-hard.int8.onnx"


def test_shared_cpu_note_counts_other_work_not_the_bench_itself():
    from edgekit.bench.render import contention_notes, other_load

    quiet_machine = {"cores": 2, "threads": 2, "load_average_start": [0.1, 0.1, 0.1],
                     "load_average_end": [2.1, 1.0, 0.5]}  # the end reading is the bench's own 2 threads
    assert other_load(quiet_machine) == pytest.approx(0.1)
    assert contention_notes(quiet_machine) == []
    busy = dict(quiet_machine, load_average_start=[1.9, 1.5, 1.0], load_average_end=[3.8, 2.0, 1.0])
    assert other_load(busy) == pytest.approx(1.9)
    [note] = contention_notes(busy)
    assert "Shared CPU" in note and "1.9 on 2 cores" in note
    assert contention_notes(dict(busy, threads=None)) == []
    # a run that measured other work's CPU time is read by it, not by the (decaying) load average
    stopped_before = dict(busy, other_work_cores=0.05)
    assert other_load(stopped_before) == pytest.approx(0.05) and contention_notes(stopped_before) == []
    [note] = contention_notes(dict(quiet_machine, other_work_cores=1.2))
    assert "used 1.2 of 2 cores on average" in note


def test_other_work_reads_the_machine_busy_time_which_holds_this_process_own():
    """OtherWork's two readings on the real machine: /proc/stat's busy time includes this process's
    CPU time (so other work = the difference), spun here by CPU time, not wall time, so a busy machine
    changes only how long it takes."""
    from edgekit.bench import measure

    busy_before, own_before = measure._machine_busy_seconds(), measure._own_cpu_seconds()
    if busy_before is None:
        pytest.skip("no /proc/stat on this system: OtherWork reads None and the load average is used")
    other_work = measure.OtherWork()
    while measure._own_cpu_seconds() - own_before < 0.3:
        pass
    own = measure._own_cpu_seconds() - own_before
    assert measure._machine_busy_seconds() - busy_before >= own - 0.05  # clock ticks: 10 ms each
    assert 0.0 <= other_work.cores() <= (os.cpu_count() or 1)
