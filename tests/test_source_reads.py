"""An export reads its source file once (edgekit/formats/source.py): one torch.load of the source
per export, whatever the exporter, the parity gate's reference runner, the data config and the
manifest need from it.

Counted with a spy, not a mock: torch.load wrapped by a counter that calls the real function, so
the export runs exactly as it would. Before SourceFile, an ONNX fp32 export loaded its checkpoint
8 times, an ONNX int8 (QDQ) export of a static int8 artifact 8 times (rebuilding the int8 model
3 times), a TFLite export 6 times; each of these tests fails if one such extra read comes back.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from edgekit.artifacts import read_manifest, sha256_file
from edgekit.config import CalibMethod, ExportOptions, QuantizeConfig, QuantMode
from edgekit.export import export_artifact
from edgekit.formats import onnx as onnx_format
from edgekit.formats import tflite


def count_torch_loads(monkeypatch) -> Counter:
    """Wrap torch.load (until the test ends) in a spy that counts each call under the resolved path
    it was given, then calls the real function with the same arguments."""
    calls: Counter = Counter()
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        calls[Path(f).resolve() if isinstance(f, (str, os.PathLike)) else repr(f)] += 1
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return calls


def loads_of(calls: Counter, source: Path) -> int:
    return calls[Path(source).resolve()]


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory, tiny_data, tiny_data_config):
    from edgekit.calibrate import make_calibration, save_calibration

    return save_calibration(make_calibration(tiny_data, tiny_data_config, size=64, seed=0),
                            tmp_path_factory.mktemp("reads-cal") / "cal.json")


@pytest.fixture(scope="module")
def static_int8(tiny_trained, tiny_data, calibration_file, tmp_path_factory) -> Path:
    from edgekit.quantize import quantize_checkpoint

    out = tmp_path_factory.mktemp("reads-int8") / "ptq.pt"
    quantize_checkpoint(tiny_trained.checkpoint, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax,
                                                                calibration=str(calibration_file), latency_runs=5,
                                                                export_onnx=False), out, data=tiny_data)
    return out


def _assert_sources_recorded(result, source: Path) -> None:
    """The manifest and the file's metadata still name the source by its own bytes' sha256."""
    manifest = read_manifest(result.path)
    assert manifest["parent"] == {"path": str(source), "sha256": sha256_file(source)}
    assert result.metadata.source_sha256 == sha256_file(source) and result.metadata.source_file == source.name


def test_the_spy_counts_and_calls_through(tiny_trained, monkeypatch):
    calls = count_torch_loads(monkeypatch)
    payload = torch.load(tiny_trained.checkpoint, map_location="cpu", weights_only=True)
    assert payload["format"] and loads_of(calls, tiny_trained.checkpoint) == 1


def test_onnx_fp32_export_reads_its_checkpoint_once(tiny_trained, tmp_path, monkeypatch):
    source = Path(tiny_trained.checkpoint)
    calls = count_torch_loads(monkeypatch)
    result = export_artifact(source, "onnx", "fp32", tmp_path / "m.fp32.onnx", ExportOptions(parity_images=64))
    assert loads_of(calls, source) == 1, calls
    _assert_sources_recorded(result, source)
    # a format's export() from the Python API still takes a path, and reads it once too
    calls.clear()
    onnx_format.export(source, tmp_path / "api.onnx", "fp32", ExportOptions())
    assert loads_of(calls, source) == 1, calls


def test_onnx_int8_qdq_export_reads_its_int8_artifact_once(static_int8, calibration_file, tmp_path, monkeypatch):
    calls = count_torch_loads(monkeypatch)
    result = export_artifact(static_int8, "onnx", "int8", tmp_path / "m.int8.onnx",
                             ExportOptions(calibration=str(calibration_file), parity_images=64))
    assert loads_of(calls, static_int8) == 1, calls
    _assert_sources_recorded(result, static_int8)
    assert read_manifest(result.path)["extra"]["qdq_from_int8_artifact"]["engine"]  # the recipe, from the same read


@pytest.mark.skipif(tflite.unavailable_reason() is not None, reason="TensorFlow not installed")
def test_tflite_export_reads_its_checkpoint_once(tiny_trained, tmp_path, monkeypatch):
    source = Path(tiny_trained.checkpoint)
    calls = count_torch_loads(monkeypatch)
    result = export_artifact(source, "tflite", "fp32", tmp_path / "m.fp32.tflite", ExportOptions(parity_images=64))
    assert loads_of(calls, source) == 1, calls
    _assert_sources_recorded(result, source)
