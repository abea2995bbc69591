"""Every kind of file edgekit writes, damaged every way a disk, a copy or an editor damages it, given to
every command that reads that kind: the command either goes on (to the data, where the sweep stops it)
or says what is wrong in one line. Never a traceback, and never "not an edgekit file" for a file
edgekit wrote.

The damage: truncated to half, emptied, the manifest of another file beside it, and each top-level
entry removed in turn (the entries are read from the file, so a new one is swept on its own).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgekit.data
from edgekit.artifacts import manifest_path
from edgekit.cli import app
from edgekit.errors import DataError

runner = CliRunner()
REACHED = "the sweep reached the data"

# Which commands read which kind of file, as "{file}" in an otherwise valid call.
READERS = {
    "checkpoint": [["info", "{file}"], ["prune", "{file}", "--out", "{tmp}/p.pt"],
                   ["quantize", "{file}", "--calibration", "{cal}", "--out", "{tmp}/q.pt"],
                   ["export", "{file}", "--target", "onnx", "--out", "{tmp}/x.onnx"],
                   ["diff", "{file}", "{ckpt}", "--out", "{tmp}/d"], ["explain", "{file}", "--out", "{tmp}/e"],
                   ["calibrate", "--source", "synthetic", "--checkpoint", "{file}", "--out", "{tmp}/c.json"]],
    "int8": [["info", "{file}"], ["export", "{file}", "--target", "onnx", "--precision", "int8", "--calibration",
                                  "{cal}", "--out", "{tmp}/x.onnx"],
             ["diff", "{ckpt}", "{file}", "--out", "{tmp}/d"], ["explain", "{file}", "--out", "{tmp}/e"],
             ["prune", "{file}", "--out", "{tmp}/p.pt"]],
    "onnx": [["info", "{file}"], ["diff", "{ckpt}", "{file}", "--out", "{tmp}/d"]],
    "calibration": [["quantize", "{ckpt}", "--calibration", "{file}", "--out", "{tmp}/q.pt"],
                    ["export", "{ckpt}", "--target", "onnx", "--precision", "int8", "--calibration", "{file}",
                     "--out", "{tmp}/x.onnx"]],
    "bench": [["bench", "--compare", "{file}", "{file}"]],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_trained, tiny_data, tiny_data_config):
    """One file of each kind edgekit writes, made from the tiny trained model."""
    from edgekit.bench import bench
    from edgekit.calibrate import make_calibration, save_calibration
    from edgekit.config import BenchConfig, ExportOptions, QuantizeConfig, QuantMode
    from edgekit.export import export_artifact
    from edgekit.quantize import quantize_checkpoint

    root = tmp_path_factory.mktemp("written")
    cal = save_calibration(make_calibration(tiny_data, tiny_data_config, size=20), root / "cal.json")
    int8 = root / "int8.pt"
    quantize_checkpoint(tiny_trained.checkpoint, QuantizeConfig(mode=QuantMode.static, method="minmax",
                                                                calibration=str(cal), latency_runs=2, export_onnx=False),
                        int8, data=tiny_data)
    onnx = export_artifact(tiny_trained.checkpoint, "onnx", "fp32", root / "x.onnx",
                           ExportOptions(parity_images=32, threads=1), data=tiny_data).path
    result = bench([tiny_trained.checkpoint], BenchConfig(threads=1, batches=(1,), warmup=0, runs=2, min_seconds=0,
                                                          sweep_seconds=0, test_limit=16, eval_batch=16),
                   out=root / "bench")
    return {"checkpoint": tiny_trained.checkpoint, "int8": int8, "onnx": onnx, "calibration": cal,
            "bench": result.outputs["json"]}


def _entries(kind: str, path: Path) -> list[str]:
    if kind in ("checkpoint", "int8"):
        return sorted(torch.load(path, map_location="cpu", weights_only=True))
    if kind in ("calibration", "bench"):
        return sorted(json.loads(path.read_text()))
    return []  # ONNX: the protobuf has no entries a reader picks by name (its metadata is optional)


def _damages(kind: str, path: Path) -> list[str]:
    return ["truncated", "emptied", "foreign manifest", *(f"without {k}" for k in _entries(kind, path))]


def _damage(source: Path, damage: str, folder: Path, other: Path) -> Path:
    """A copy of `source` (and its manifest) damaged one way."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / source.name
    shutil.copy(source, copy)
    if manifest_path(source).exists():
        shutil.copy(manifest_path(source), manifest_path(copy))
    if damage == "truncated":
        copy.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif damage == "emptied":
        copy.write_bytes(b"")
    elif damage == "foreign manifest":
        shutil.copy(manifest_path(other), manifest_path(copy))
    else:
        key = damage.removeprefix("without ")
        if copy.suffix == ".pt":
            payload = torch.load(source, map_location="cpu", weights_only=True)
            del payload[key]
            torch.save(payload, copy)
        else:
            payload = json.loads(source.read_text())
            del payload[key]
            copy.write_text(json.dumps(payload))
    return copy


CASES = [(kind, damage, i) for kind, readers in READERS.items() for i in range(len(readers))
         for damage in ("truncated", "emptied", "foreign manifest", "without *")]


@pytest.mark.parametrize("kind, damage, reader", CASES, ids=[f"{k}-{d}-{READERS[k][i][0]}" for k, d, i in CASES])
def test_every_damaged_file_is_one_line_or_read(kind, damage, reader, written, tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise DataError(REACHED, "the file was accepted")

    monkeypatch.setattr(edgekit.data, "load_data", no_data)
    source = written[kind]
    other = written["onnx" if kind != "onnx" else "checkpoint"]
    damages = [d for d in _damages(kind, source) if d.startswith("without ")] if damage == "without *" else [damage]
    for one in damages:
        broken = _damage(source, one, tmp_path / one.replace(" ", "-"), other)
        argv = [a.format(file=broken, tmp=tmp_path / "out", ckpt=written["checkpoint"], cal=written["calibration"])
                for a in READERS[kind][reader]]
        result = runner.invoke(app, argv, env={"COLUMNS": "400"})
        shown = f"{kind} {one}: edgekit {' '.join(argv)}\nexit {result.exit_code}\nstderr: {result.stderr}"
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{shown}\nraised {type(result.exception).__name__}: {result.exception}"
        assert "Traceback" not in result.output, shown
        if result.exit_code != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), shown
            assert "not an edgekit" not in lines[0] and "not a torch file" not in lines[0], shown


def test_a_file_of_another_edgekit_kind_is_named_for_what_it_is(written, tmp_path):
    result = runner.invoke(app, ["prune", str(written["int8"]), "--out", str(tmp_path / "p.pt")])
    assert result.exit_code == 1 and "is an edgekit int8 model" in result.stderr, result.stderr
