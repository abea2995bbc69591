"""int8: real torch.ao quantization of a tiny trained model; weights counted, accuracy compared."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from edgekit.artifacts import read_manifest
from edgekit.calibrate import read_definition
from edgekit.config import CalibMethod, QuantizeConfig, QuantMode
from edgekit.data import to_unit_float
from edgekit.errors import CalibrationError, CheckpointError, ConfigError
from edgekit.model import ModelSpec, load_checkpoint
from edgekit.measure import accuracy
from edgekit.qmodel import PACKED_QTENSOR, int8_census, load_quantized
from edgekit.quantize import quantize_checkpoint

# Tolerance for PTQ on the tiny model: 200 validation images, so one image is 0.5 pt.
PTQ_TOLERANCE = 0.05


# The int8-vs-int8 gate loosened for tiny models: see loose_int8_vs_int8_gate in conftest.py.
pytestmark = pytest.mark.usefixtures("loose_int8_vs_int8_gate")


@pytest.fixture(scope="module")
def trained(tiny_trained, tiny_data, tiny_calibration):
    """The session's tiny trained model (tests/conftest.py), its data and a 64-image calibration set."""
    assert tiny_trained.best_val_accuracy > 0.2  # learnable: well above the 10 % chance level
    return tiny_trained.checkpoint, tiny_calibration, tiny_data


def test_static_ptq_int8_weights_and_accuracy(trained, tmp_path):
    source, cal, data = trained
    out = tmp_path / "int8.pt"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.auto,
                                                            calibration=str(cal), latency_runs=5), out, data=data)
    # x86's 7-bit activation range is given as quant_min/quant_max, not by torch's deprecated
    # reduce_range, which warned once per observer built
    assert not [w for w in seen if "quant_min and quant_max" in str(w.message)]
    census = result.metrics["census"]
    assert census["qint8_tensors"] == 21  # 20 convs (stem, 16 in blocks, 3 downsample) + fc
    assert abs(result.metrics["fp32_val_accuracy"] - result.metrics["val_accuracy"]) <= PTQ_TOLERANCE
    assert {row["method"] for row in read_manifest(out)["extra"]["recipe"]["methods_tried"]} == \
        {"minmax", "percentile", "entropy", "mse"}
    # safe load (weights_only) + replayed recipe gives the same int8 model
    payload = torch.load(out, weights_only=True)
    stored = [v for v in payload["state_dict"].values() if isinstance(v, dict) and v.get(PACKED_QTENSOR) == "qint8"]
    assert len(stored) >= 20 and all(v["int_repr"].dtype == torch.int8 for v in stored)  # int8 on disk, compact
    reloaded, _ = load_quantized(out)
    assert int8_census(reloaded)["qint8_tensors"] == 21
    assert accuracy(reloaded, data) == pytest.approx(result.metrics["val_accuracy"])
    manifest = read_manifest(out)
    assert manifest["parent"]["sha256"] and manifest["extra"]["calibration"]["pixels_sha256"]
    assert manifest["precision"] == "int8"
    assert "test_accuracy" in manifest["metrics"] and "val_accuracy" in manifest["metrics"]
    # the QDQ file beside it went through export's gate: a counted label, parity in its manifest
    assert result.onnx is not None and result.onnx.exists()
    side = read_manifest(result.onnx)
    assert side["precision"] == "int8" and side["metrics"]["parity"]["images"] > 0
    assert side["parent"]["sha256"] == manifest["sha256"]


def _assert_qdq_reproduces_int8(onnx_path, int8_model, data, convs_int8):
    """The QDQ ONNX of an int8 model: int8 initializers, integer convs in ORT, the int8 model's answers."""
    from edgekit.formats import onnx as onnx_format

    census = onnx_format.census(onnx_path)
    assert census["weights_by_dtype"].get("int8", 0) > 0.95 * sum(census["weights_by_dtype"].values())
    assert census["runtime"]["integer_conv_gemm"] >= convs_int8  # ORT fused each DQ->Conv->Q into QLinearConv
    images = to_unit_float(data.val_x[:200])
    with torch.no_grad():
        expected = int8_model(images).numpy()
    got = onnx_format.load_runner(onnx_path, threads=1).predict(images.numpy())
    labels = data.val_y[:200].numpy()
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    # Same weights, scales and codes, but ONNX does not clip at torch's 7-bit top and the runtimes
    # requantize differently: up to 1.5 % of images flip, cosine >= 0.9994, accuracy within one
    # image (measured on the session's tiny model). Wrong scales or weights flip most of them.
    assert agreement >= 0.95
    assert cosine.mean() >= 0.995
    assert abs((got.argmax(1) == labels).mean() - (expected.argmax(1) == labels).mean()) <= 0.02


def test_int8_artifact_exports_through_the_gate_and_refuses_float(trained, tmp_path):
    from edgekit.config import ExportOptions
    from edgekit.errors import UnsupportedError
    from edgekit.export import export_artifact

    source, cal, data = trained
    int8 = tmp_path / "int8.pt"
    made = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax,
                                                      calibration=str(cal), latency_runs=5), int8, data=data)
    # minmax: one calibration instead of auto's four (test_static_ptq covers those)
    _assert_qdq_reproduces_int8(made.onnx, load_quantized(int8)[0], data, convs_int8=21)  # 20 convs + fc (QGemm)
    options = ExportOptions(calibration=str(cal), parity_images=200)
    result = export_artifact(int8, "onnx", "int8", tmp_path / "int8.onnx", options)
    assert result.precision == "int8" and result.executed_precision == "int8"
    manifest = read_manifest(result.path)
    assert manifest["parent"]["sha256"] == read_manifest(int8)["sha256"]
    with pytest.raises(UnsupportedError, match="int8 model"):
        export_artifact(int8, "onnx", "fp32", tmp_path / "x.onnx", options)


def test_dynamic_touches_only_fc(trained, tmp_path):
    source, _, data = trained
    result = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.dynamic, latency_runs=5),
                                 tmp_path / "dyn.pt", data=data)
    assert result.metrics["census"]["qint8_tensors"] == 1
    assert "only the final Linear" in read_manifest(tmp_path / "dyn.pt")["extra"]["note"]
    # torch's rebuild of the file's qint8 tensor warns (UserWarning) about its own TypedStorage;
    # where such warnings are errors, that must not turn a sound file into "truncated or corrupt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        reloaded, _ = load_quantized(tmp_path / "dyn.pt")
    assert int8_census(reloaded)["qint8_tensors"] == 1


def test_qat_trains_and_converts_with_keep_float(trained, tiny_short, tmp_path):
    source, _, _ = trained
    data, cal = tiny_short
    config = QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.minmax, calibration=str(cal), qat_epochs=1,
                            keep_float=1, latency_runs=5)
    result = quantize_checkpoint(source, config, tmp_path / "qat.pt", data=data)
    m = result.metrics
    assert "qat_fake_quant_val_accuracy" in m and "ptq_val_accuracy" in m
    assert m["census"]["qint8_tensors"] == 20  # one layer kept float
    assert len(result.sensitivity) == 21
    assert m["val_accuracy"] >= m["fp32_val_accuracy"] - PTQ_TOLERANCE  # 0.940 -> 0.940 measured
    reloaded, _ = load_quantized(tmp_path / "qat.pt")
    assert accuracy(reloaded, data) == pytest.approx(m["val_accuracy"])
    # the QDQ file carries the QAT weights and scales, the float-kept layer included
    _assert_qdq_reproduces_int8(result.onnx, reloaded, data, convs_int8=19)


def test_an_interrupted_qat_goes_on_from_its_last_epoch_to_the_same_int8_file(trained, tiny_short, tmp_path):
    """Three QAT epochs, observers frozen after the first: two cycles (1, 2). Stopped in the second
    cycle after its first epoch, the rerun keeps cycle one, goes on inside cycle two, and writes the
    int8 model an uninterrupted run writes."""
    from conftest import StopAfterEpochs
    from edgekit.scratch import scratch_dir

    source, _, _ = trained
    data, cal = tiny_short
    config = QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.minmax, calibration=str(cal), qat_epochs=3,
                            latency_runs=5, export_onnx=False)
    quantize_checkpoint(source, config, tmp_path / "whole.pt", data=data)
    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(source, config, out, data=data, reporter=StopAfterEpochs(stop_at=3))
    assert not out.exists() and (scratch_dir(out) / "cycle0.done.pt").exists()
    again = StopAfterEpochs()
    quantize_checkpoint(source, config, out, data=data, reporter=again)
    assert any("QAT cycle 1/2 finished before an interruption" in line for line in again.lines), again.lines
    assert any("resumed from" in line and "after epoch 1" in line for line in again.lines), again.lines
    assert again.epochs == 1 and not scratch_dir(out).exists()
    whole, _ = load_quantized(tmp_path / "whole.pt")
    cut, _ = load_quantized(out)
    images = to_unit_float(data.val_x[:64])
    with torch.inference_mode():
        assert torch.equal(whole(images), cut(images))


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


# ---- the ARM engine (qnnpack): its own qconfig, ranges and kernels, selected from the file ---------


def _conv_weights(qmodel):
    import torch.ao.nn.quantized as nnq

    return [m.weight() for m in qmodel.modules() if isinstance(m, nnq.Conv2d)]


def _stub_codes(qmodel, images):
    """The integer codes the int8 model's input stub writes: what its activation range really uses."""
    with torch.no_grad():
        return qmodel.quant(qmodel.normalize(images)).int_repr()


def test_qnnpack_activation_range_and_weight_scheme_against_fbgemm():
    """torch's own qconfigs for each engine: qnnpack full 8-bit activations, fbgemm (and x86) 7-bit."""
    from edgekit.config import QuantBackend
    from edgekit.qengine import activation_range, describe_engine, qat_qconfig
    from edgekit.quantize import activation_observer

    for backend, quant_max, reduce_range, per_channel in ((QuantBackend.qnnpack, 255, False, False),
                                                          (QuantBackend.fbgemm, 127, True, True),
                                                          (QuantBackend.x86, 127, True, True)):
        config = QuantizeConfig(backend=backend)
        for method in (CalibMethod.minmax, CalibMethod.entropy):
            with warnings.catch_warnings():
                # the range is passed as quant_min/quant_max, not by torch's deprecated (and noisy) reduce_range
                warnings.simplefilter("error")
                observer = activation_observer(method, config)()
            assert (observer.quant_min, observer.quant_max, observer.dtype) == (0, quant_max, torch.quint8)
        assert activation_range(backend.value)["quant_max"] == quant_max
        engine = describe_engine(backend.value)
        assert engine["activation"]["reduce_range"] is reduce_range and engine["weight"]["per_channel"] is per_channel
        assert engine["fusions"][:2] == ["Conv2d + BatchNorm2d + ReLU", "Conv2d + BatchNorm2d"]
        qat = qat_qconfig(backend.value)
        assert qat.activation().quant_max == quant_max
        assert qat.weight().qscheme == (torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric)


@pytest.fixture(scope="module")
def qnnpack_static(loose_int8_vs_int8_gate, trained, tmp_path_factory):
    source, cal, data = trained
    out = tmp_path_factory.mktemp("qnnpack") / "int8-qnnpack.pt"
    result = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax,
                                                        backend="qnnpack", calibration=str(cal), latency_runs=5),
                                 out, data=data)
    return out, result


def test_qnnpack_static_ptq_is_per_tensor_full_range_and_reloads_under_its_engine(trained, qnnpack_static, tmp_path):
    from edgekit.formats import SOURCE_FORMAT
    from edgekit.qengine import host_cpu
    from edgekit.qmodel import int8_as_fake_quant

    source, cal, data = trained
    out, result = qnnpack_static
    assert result.metrics["census"]["qint8_tensors"] == 21
    weights = _conv_weights(result.model)
    assert len(weights) == 20
    assert all(w.dtype == torch.qint8 and w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
               and int(w.q_zero_point()) == 0 for w in weights)
    images = to_unit_float(data.val_x[:200])
    assert int(_stub_codes(result.model, images).max()) > 127  # the full 8-bit range is in use
    recipe = read_manifest(out)["extra"]["recipe"]
    assert recipe["backend"] == "qnnpack"
    assert recipe["engine"]["activation"] == {"dtype": "quint8", "qscheme": "per_tensor_affine", "quant_min": 0,
                                              "quant_max": 255, "reduce_range": False, "bits": 8}
    assert recipe["engine"]["weight"]["per_channel"] is False and recipe["engine"]["kernels_for"] == "ARM"
    assert abs(result.metrics["fp32_val_accuracy"] - result.metrics["val_accuracy"]) <= PTQ_TOLERANCE

    # the same model under fbgemm: per-channel weights, 7-bit activations
    x86 = quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax,
                                                     backend="fbgemm", calibration=str(cal), latency_runs=5,
                                                     export_onnx=False), tmp_path / "int8-fbgemm.pt", data=data)
    assert all(w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) for w in _conv_weights(x86.model))
    assert int(_stub_codes(x86.model, images).max()) <= 127

    # loading selects the file's engine, whatever the global default was; the runner records it
    torch.backends.quantized.engine = "x86"
    runner = SOURCE_FORMAT.module().load_runner(out, threads=1)
    assert torch.backends.quantized.engine == "qnnpack" and runner.engine == "qnnpack"
    assert "qnnpack" in runner.name
    if host_cpu() == "x86":
        assert any(n.startswith("x86 via qnnpack: not representative of ARM") for n in runner.notes)
    alone = runner.predict(images.numpy())
    # another engine's file loaded after it (a bench does that) leaves its answers as they were
    other = SOURCE_FORMAT.module().load_runner(tmp_path / "int8-fbgemm.pt", threads=1)
    assert other.engine == "fbgemm" and other.notes == []
    other.predict(images.numpy())
    torch.backends.quantized.engine = "x86"
    np.testing.assert_array_equal(runner.predict(images.numpy()), alone)

    # The fake-quant twin (what the QDQ ONNX is written from) computes the same numbers in float;
    # the int8 kernels requantize each layer's int32 sums in integer arithmetic, the twin rounds
    # float products, so codes may differ by one step here and there and the difference grows
    # through 20 layers: a few images may flip (none of 200 on the session's tiny model, cosine
    # 0.9999, measured). Wrong scales, a wrong weight scheme or the wrong engine's kernels flip
    # far more and turn the logits (cosine).
    reloaded, payload = load_quantized(out)
    twin = int8_as_fake_quant(reloaded, ModelSpec.from_dict(payload["spec"]), payload["recipe"])
    with torch.no_grad():
        fake = twin(images).numpy()
    cosine = (fake * alone).sum(1) / (np.linalg.norm(fake, axis=1) * np.linalg.norm(alone, axis=1))
    agreement = (fake.argmax(1) == alone.argmax(1)).mean()
    print(f"twin vs qnnpack int8: agreement {agreement:.3f}, cosine {cosine.mean():.5f}, "
          f"max abs {np.abs(fake - alone).max():.4f} (logits up to {np.abs(alone).max():.2f})")
    assert agreement >= 0.97
    assert cosine.mean() >= 0.995


def test_qnnpack_int8_exports_to_onnx_through_the_gate(trained, qnnpack_static, tmp_path):
    """The gate as for x86 files (this module's loosened int8-vs-int8 drop, see above): qnnpack's
    8-bit grid is ONNX's own, so the QDQ file is the twin's numbers, yet ORT and QNNPACK still
    requantize differently (all 200 images agreed, cosine 0.9999, on the session's tiny model)."""
    from edgekit.config import ExportOptions
    from edgekit.export import export_artifact

    source, cal, data = trained
    out, result = qnnpack_static
    assert result.onnx is not None  # quantize's own QDQ file passed the gate too
    _assert_qdq_reproduces_int8(result.onnx, load_quantized(out)[0], data, convs_int8=21)
    made = export_artifact(out, "onnx", "int8", tmp_path / "qnnpack.onnx",
                           ExportOptions(calibration=str(cal), parity_images=200))
    assert made.precision == "int8" and made.executed_precision == "int8"
    manifest = read_manifest(made.path)
    parity = manifest["metrics"]["parity"]
    print(f"qnnpack int8 -> ONNX parity: agreement {parity['top1_agreement']:.3f}, cosine {parity['cosine_mean']:.5f}, "
          f"drop {parity['accuracy_drop_points']:.2f} pt")
    assert parity["top1_agreement"] >= 0.95 and parity["cosine_mean"] >= 0.995
    grid = manifest["extra"]["qdq_from_int8_artifact"]
    assert grid["engine"] == "qnnpack" and grid["torch_activation_range"] == [0, 255]
    assert grid["reduce_range"] is False and grid["weights_per_channel"] is False
    assert "own 8-bit grid" in grid["activation_grid"]


def test_bench_labels_qnnpack_latency_on_x86(trained, qnnpack_static):
    """The bench row says which engine ran and, off ARM, that its latency is not ARM's."""
    from edgekit.bench import bench, markdown_text
    from edgekit.config import BenchConfig
    from edgekit.formats import SOURCE_FORMAT
    from edgekit.qengine import host_cpu

    _, _, data = trained
    out, _ = qnnpack_static
    run = bench([out], BenchConfig(threads=1, batches=(1,), warmup=1, runs=3, min_seconds=0.0, sweep_seconds=0.01,
                                   test_limit=64))
    row = next(r for r in run.rows if r.artifact == str(out))
    assert row.status == "ok" and row.runner == "torch-int8 (qnnpack)"
    assert row.test_images == 64
    # the row's accuracy is this file's, under its own engine, on the first 64 test images
    runner = SOURCE_FORMAT.module().load_runner(out, threads=1)
    logits = runner.predict(to_unit_float(data.test_x[:64]).numpy())
    assert row.accuracy == pytest.approx(float((logits.argmax(1) == data.test_y[:64].numpy()).mean()))
    if host_cpu() == "x86":
        assert any(n.startswith("x86 via qnnpack: not representative of ARM") for n in row.notes)
        assert "x86 via qnnpack: not representative of ARM" in markdown_text(run)


def test_tensorrt_refuses_a_qnnpack_artifact_in_one_line(qnnpack_static, tmp_path):
    """Jetson's GPU path wants per-channel weights: a qnnpack (ARM CPU) file is named as such, with the fix."""
    from edgekit.config import ExportOptions
    from edgekit.errors import UnsupportedError
    from edgekit.formats import tensorrt as trt_format

    out, _ = qnnpack_static
    with pytest.raises(UnsupportedError, match="qnnpack engine") as refused:
        trt_format.prepare_source_onnx(out, tmp_path / "x.int8.onnx", "int8", ExportOptions())
    assert "\n" not in str(refused.value) and "--backend x86" in refused.value.hint
    assert not (tmp_path / "x.int8.onnx").exists()


def test_qnnpack_qat_is_per_tensor_full_range(trained, tiny_short, tmp_path):
    from edgekit.qengine import _aoq
    from edgekit.quantize import prepare_qat_from_ptq

    source, _, _ = trained
    data, cal = tiny_short
    fake = prepare_qat_from_ptq(load_checkpoint(source).build(), None, backend="qnnpack")
    quantizers = [m for m in fake.modules() if isinstance(m, _aoq().FakeQuantize)]
    acts = [q for q in quantizers if q.dtype == torch.quint8]
    assert acts and all((q.quant_min, q.quant_max) == (0, 255) for q in acts)
    assert all(q.qscheme == torch.per_tensor_symmetric for q in quantizers if q.dtype == torch.qint8)
    config = QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.minmax, backend="qnnpack", calibration=str(cal),
                            qat_epochs=1, latency_runs=5, export_onnx=False)
    result = quantize_checkpoint(source, config, tmp_path / "qat-qnnpack.pt", data=data)
    weights = _conv_weights(result.model)
    assert len(weights) == 20 and all(w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
                                      for w in weights)
    assert int(_stub_codes(result.model, to_unit_float(data.val_x[:200])).max()) > 127
    assert "0..255" in read_manifest(tmp_path / "qat-qnnpack.pt")["extra"]["recipe"]["qat_fake_quant"]
    torch.backends.quantized.engine = "x86"
    reloaded, _ = load_quantized(tmp_path / "qat-qnnpack.pt")
    assert torch.backends.quantized.engine == "qnnpack"
    assert accuracy(reloaded, data) == pytest.approx(result.metrics["val_accuracy"])


def test_a_bad_backend_is_one_line_with_the_choices(trained, tmp_path):
    from edgekit.errors import UnsupportedError
    from edgekit.qengine import set_backend

    source, cal, data = trained
    with pytest.raises(ConfigError) as bad:
        QuantizeConfig(backend="arm").validate()
    assert "\n" not in str(bad.value) and "x86, fbgemm, qnnpack" in bad.value.message and "'arm'" in bad.value.message
    with pytest.raises(ConfigError, match="--backend must be one of"):
        quantize_checkpoint(source, QuantizeConfig(backend="neon", calibration=str(cal)), tmp_path / "x.pt", data=data)
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(UnsupportedError) as missing:
        set_backend("nonesuch")
    assert "\n" not in str(missing.value) and "--backend" in missing.value.hint
