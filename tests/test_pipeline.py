"""The whole chain on a tiny config: every stage runs for real, once; a second run with one option
changed and one file lost redoes only what that touches and skips the rest, untouched on disk."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgekit.config import BenchConfig, CalibMethod, DataConfig, DataSource, PruneConfig, TrainConfig
from edgekit.formats import FORMATS
from edgekit.pipeline import PipelineConfig, run_pipeline


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> PipelineConfig:
    data = DataConfig(source=DataSource.synthetic, synthetic_train=1000, synthetic_test=200, val_size=100,
                      cache_dir=str(tmp_path_factory.mktemp("cache")))
    # Three epochs so the model learns (one epoch left it at chance, where every int8 rendering
    # flips a coin on most images and the parity gate measures nothing).
    return PipelineConfig(
        data=data,
        train=TrainConfig(epochs=3, batch_size=64, lr=0.1, width=0.125, warmup_epochs=0.5, threads=2, cutout=0),
        prune=PruneConfig(ratio=0.3, finetune_epochs=0, latency_runs=5),
        calibration_size=32, static_method=CalibMethod.minmax, qat_epochs=1,
        bench=BenchConfig(batches=(1,), runs=3, min_seconds=0.0, warmup=1, sweep_seconds=0.05, test_limit=64),
    )


@pytest.fixture(scope="module")
def first(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    began = time.perf_counter()
    result = run_pipeline(config, out)
    return out, result, time.perf_counter() - began


UNKEYED = ("data", "bench")  # run every time: no artifact key to skip on


def test_pipeline_runs_every_stage(first):
    out, result, wall_seconds = first
    status = {record.stage: record.status for record in result.stages}
    trained = next(r for r in result.stages if r.stage == "train")
    assert float(trained.detail.split()[1].rstrip("%")) > 20.0, trained.detail  # well above 10 % chance
    for stage in ("train", "calibrate", "prune", "quantize static", "quantize qat (pruned)", "bench"):
        assert status[stage] == "done", (stage, status[stage])
    exports = [r for r in result.stages if r.stage.startswith("export ")]
    # every exportable (target, precision) for the two float models, int8 targets for the two int8 ones
    targets = [fmt for fmt in FORMATS.values() if fmt.exportable]
    assert len(exports) == 2 * sum(len(fmt.precisions) for fmt in targets) + 2 * sum("int8" in fmt.precisions
                                                                                       for fmt in targets)
    made = [r for r in exports if r.status == "done"]
    assert any(r.artifact.endswith("best.static.int8.onnx") for r in made)  # an int8 child, exported as int8
    assert any(r.artifact.endswith("pruned.int8.tflite") for r in made)
    # a target this machine cannot run (TensorRT without a GPU) says why in its record, not hidden;
    # one it can run is exported (on a GPU machine TensorRT is simply among the made ones)
    for fmt in targets:
        records = [r for r in exports if r.stage.split()[1] == fmt.name]
        reason = fmt.unavailable_reason()
        if reason is not None:
            assert records and all("DependencyError" in r.status for r in records), fmt.name
        else:
            assert any(r.status == "done" for r in records), fmt.name
    recorded = json.loads((out / "pipeline.json").read_text())
    assert [(r["stage"], r["status"]) for r in recorded] == [(r.stage, r.status) for r in result.stages]
    # every stage says how long it took; stage times are each its own, not running totals
    assert recorded[0]["stage"] == "data" and all(r["seconds"] > 0 for r in recorded), recorded
    assert sum(r["seconds"] for r in recorded) <= wall_seconds
    rows = json.loads((out / "bench" / "bench.json").read_text())["rows"]
    assert {r.artifact for r in made} <= {row["artifact"] for row in rows}  # bench saw every made file


def test_a_second_run_redoes_what_changed_or_is_missing_and_leaves_the_rest(config, first):
    """The cheapest change with dependents: QAT's epochs touch the QAT model and its exports (their
    parent's bytes change) and nothing upstream; a lost export is remade as after an interruption.
    Runs after the test above (file order): it rewrites the folder that test reads."""
    out, result, _ = first
    # stage names repeat across sources ("export onnx fp32" for best and pruned): keyed by artifact
    made = [Path(r.artifact) for r in result.stages if r.status == "done" and r.stage not in UNKEYED]
    lost = out / "export" / "best.fp32.onnx"
    assert lost in made
    lost.unlink()
    before = {path: path.stat().st_mtime_ns for path in made if path.exists()}

    second = run_pipeline(replace(config, qat_epochs=config.qat_epochs + 1), out)
    status = {Path(r.artifact): r.status for r in second.stages if r.stage not in UNKEYED}
    # the QAT model and every export of it ran again: made, or refused by the gate (a new model may
    # fail it), never skipped
    qat = [path for path in status if path.name.startswith("pruned.qat.int8")]
    int8_targets = sum("int8" in fmt.precisions for fmt in FORMATS.values() if fmt.exportable)
    assert len(qat) == 1 + int8_targets and all(status[path] != "skipped (same config)" for path in qat), qat
    assert status[lost] == "done"
    for path in made:
        if path in qat or path == lost:
            continue
        assert status[path] == "skipped (same config)", (path, status[path])
        assert path.stat().st_mtime_ns == before[path], path  # not rewritten
    assert lost.exists()
