"""int8: real torch.ao quantization of a tiny trained model; weights counted, accuracy compared."""

from __future__ import annotations

import json

import pytest
import torch

from edgekit.artifacts import read_manifest, to_plain
from edgekit.calibrate import make_calibration, read_definition, save_calibration
from edgekit.config import CalibMethod, DataConfig, DataSource, QuantizeConfig, QuantMode, TrainConfig
from edgekit.data import load_data
from edgekit.errors import CalibrationError, CheckpointError, ConfigError
from edgekit.model import ModelSpec, ResNet18, save_checkpoint
from edgekit.prune import accuracy
from edgekit.quantize import int8_census, load_quantized, quantize_checkpoint
from edgekit.train import train_model

DATA = DataConfig(source=DataSource.synthetic, synthetic_train=1000, synthetic_test=200, val_size=200)
# Tolerance for PTQ on the tiny model: 200 validation images, so one image is 0.5 pt.
PTQ_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(2)
    data = load_data(DATA)
    model = ResNet18(ModelSpec.from_width(0.125))
    result = train_model(model, data, TrainConfig(epochs=3, batch_size=128, lr=0.1, warmup_epochs=0.5,
                                                  width=0.125, channels_last=False, eval_batch_size=500))
    root = tmp_path_factory.mktemp("quant")
    path = root / "fp32.pt"
    save_checkpoint(path, result.model, data.classes, {"data_config": to_plain(DATA)})
    cal = save_calibration(make_calibration(data, DATA, size=64), root / "cal.json")
    assert result.best_val_accuracy > 0.2  # learnable: well above the 10 % chance level
    return path, cal, data


def test_static_ptq_int8_weights_and_accuracy(trained, tmp_path):
    source, cal, data = trained
    out = tmp_path / "int8.pt"
    result = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.auto,
                                                        calibration=str(cal), latency_runs=5), out, data=data)
    census = result.metrics["census"]
    assert census["qint8_tensors"] == 21  # 20 convs (stem, 16 in blocks, 3 downsample) + fc
    assert abs(result.metrics["fp32_val_accuracy"] - result.metrics["val_accuracy"]) <= PTQ_TOLERANCE
    assert {row["method"] for row in read_manifest(out)["extra"]["recipe"]["methods_tried"]} == \
        {"minmax", "percentile", "entropy", "mse"}
    # safe load (weights_only) + replayed recipe gives the same int8 model
    payload = torch.load(out, weights_only=True)
    assert sum(1 for v in payload["state_dict"].values() if isinstance(v, torch.Tensor) and v.dtype == torch.qint8) >= 20
    reloaded, _ = load_quantized(out)
    assert int8_census(reloaded)["qint8_tensors"] == 21
    assert accuracy(reloaded, data) == pytest.approx(result.metrics["val_accuracy"])
    manifest = read_manifest(out)
    assert manifest["parent"]["sha256"] and manifest["extra"]["calibration"]["pixels_sha256"]
    assert manifest["precision"] == "int8"
    assert "test_accuracy" in manifest["metrics"] and "val_accuracy" in manifest["metrics"]
    assert result.onnx is not None and result.onnx.exists()


def test_dynamic_touches_only_fc(trained, tmp_path):
    source, _, data = trained
    result = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.dynamic, latency_runs=5),
                                 tmp_path / "dyn.pt", data=data)
    assert result.metrics["census"]["qint8_tensors"] == 1
    assert "only the final Linear" in read_manifest(tmp_path / "dyn.pt")["extra"]["note"]


def test_qat_trains_and_converts_with_keep_float(trained, tmp_path):
    source, cal, data = trained
    config = QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.minmax, calibration=str(cal), qat_epochs=1,
                            keep_float=1, latency_runs=5, export_onnx=False)
    result = quantize_checkpoint(source, config, tmp_path / "qat.pt", data=data)
    m = result.metrics
    assert "qat_fake_quant_val_accuracy" in m and "ptq_val_accuracy" in m
    assert m["census"]["qint8_tensors"] == 20  # one layer kept float
    assert len(result.sensitivity) == 21
    assert m["val_accuracy"] > 0.2
    reloaded, _ = load_quantized(tmp_path / "qat.pt")
    assert accuracy(reloaded, data) == pytest.approx(m["val_accuracy"])


def test_refusals(trained, tmp_path):
    source, cal, data = trained
    definition = read_definition(cal)
    definition["pixels_sha256"] = "f" * 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(definition))
    with pytest.raises(CalibrationError):
        quantize_checkpoint(source, QuantizeConfig(calibration=str(bad)), tmp_path / "x.pt", data=data)
    with pytest.raises(ConfigError, match="calibration"):
        quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static), tmp_path / "x.pt", data=data)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        quantize_checkpoint(junk, QuantizeConfig(calibration=str(cal)), tmp_path / "x.pt", data=data)
    with pytest.raises(CheckpointError):
        load_quantized(source)  # an fp32 checkpoint is not an int8 artifact
    assert not (tmp_path / "x.pt").exists()
