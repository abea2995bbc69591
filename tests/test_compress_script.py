"""benchmarks/compress.py end to end on the session's tiny model: every step's artifact, each
fine-tuned child read against its control with the paired standard error, and a second run that
keeps every finished step instead of training it again (how a long run cut off part-way resumes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compress.py"


def load_compress(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(SCRIPT.parent), *sys.path])
    spec = importlib.util.spec_from_file_location("benchmark_compress_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_compress_reads_each_child_against_its_control_with_the_paired_error_and_resumes(
        tiny_trained, tiny_calibration, tiny_data, tmp_path, monkeypatch):
    compress = load_compress(monkeypatch)
    out_dir, results = tmp_path / "run", tmp_path / "results"
    argv = [str(SCRIPT), "--checkpoint", str(tiny_trained.checkpoint), "--calibration", str(tiny_calibration),
            "--out-dir", str(out_dir), "--results", str(results), "--name", "tiny", "--finetune-epochs", "1",
            "--qat-epochs", "1", "--latency-runs", "4", "--rounds", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    compress.main()
    result = json.loads((results / "tiny.json").read_text())
    rows = {row["key"]: row for row in result["rows"]}
    assert set(rows) == {"reference", "pruned", "pruned.control", "dynamic", "ptq", "pruned-ptq", "qat", "qat.control"}
    assert rows["pruned"]["control"] == "pruned.control" and rows["qat"]["control"] == "qat.control"
    assert rows["ptq"]["control"] == "reference" and rows["pruned-ptq"]["control"] == "pruned.control"
    assert rows["pruned"]["macs"] < rows["reference"]["macs"] == rows["pruned.control"]["macs"]
    sizes = {"val": len(tiny_data.val_y), "test": len(tiny_data.test_y)}
    for key, row in rows.items():
        assert row["latency_p50_ms"] > 0
        for split, images in sizes.items():
            paired = row.get(f"paired_vs_control_{split}")
            if row["control"] is None:
                assert paired is None
                continue
            assert paired["images"] == images
            # re-scored in this process: the same answers as the manifests' accuracies, to within an
            # image whose two top logits tie to float precision
            assert paired["difference_pt"] == pytest.approx(row[f"vs_control_{split}_pt"], abs=100 * 1.01 / images)
            assert (paired["standard_error_pt"] > 0) == (paired["lost"] + paired["gained"] > 0)
            assert 0 < paired["mcnemar_p"] <= 1
    markdown = (results / "tiny.md").read_text()
    pruned_line = next(line for line in markdown.splitlines() if line.startswith("| pruning: drop vs control"))
    assert f"SE {rows['pruned']['paired_vs_control_test']['standard_error_pt']:.2f}" in pruned_line

    # Run again: every finished step is kept (its file untouched), only the table is measured anew.
    made = {path.name: path.stat().st_mtime_ns for path in out_dir.glob("*.pt")}
    assert len(made) == 7
    compress.main()
    assert {path.name: path.stat().st_mtime_ns for path in out_dir.glob("*.pt")} == made
    again = {row["key"]: row for row in json.loads((results / "tiny.json").read_text())["rows"]}
    assert again["pruned"]["paired_vs_control_test"] == rows["pruned"]["paired_vs_control_test"]
