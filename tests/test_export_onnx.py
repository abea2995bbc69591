"""ONNX export end to end on the tiny trained model: real files, real ONNX Runtime sessions."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.artifacts import read_manifest, sha256_file
from edgekit.calibrate import make_calibration, save_calibration
from edgekit.config import ExportOptions
from edgekit.errors import ConfigError, ParityError, UnsupportedError
from edgekit.export import export_artifact
from edgekit.formats import onnx as onnx_format
from edgekit.validate import parity, precision_label


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory, tiny_data, tiny_data_config):
    cal = make_calibration(tiny_data, tiny_data_config, size=128, seed=0)
    return save_calibration(cal, tmp_path_factory.mktemp("cal") / "cal.json")


@pytest.fixture(scope="module")
def exports(tiny_trained, calibration_file, tmp_path_factory):
    """One export per precision, shared by the tests below (each export costs a few seconds)."""
    out = tmp_path_factory.mktemp("exports")
    options = ExportOptions(calibration=str(calibration_file), parity_images=256, threads=2)
    return {p: export_artifact(tiny_trained.checkpoint, "onnx", p, out / f"tiny.{p}.onnx", options)
            for p in ("fp32", "fp16", "int8")}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_passes_the_gate_and_records_a_manifest(exports, tiny_trained, precision):
    result = exports[precision]
    assert result.path.exists() and result.precision == precision
    manifest = read_manifest(result.path)
    assert manifest["kind"] == "export" and manifest["format"] == "onnx"
    assert manifest["precision"] == precision  # counted, and it matches what was asked
    assert manifest["sha256"] == sha256_file(result.path)
    assert manifest["parent"]["sha256"] == sha256_file(tiny_trained.checkpoint)
    parity_metrics = manifest["metrics"]["parity"]
    assert parity_metrics["images"] == 256
    minimum = {"fp32": 0.999, "fp16": 0.995, "int8": 0.85}[precision]
    assert parity_metrics["top1_agreement"] >= minimum
    if precision == "fp32":
        assert parity_metrics["max_abs"] < 1e-3
    assert manifest["metrics"]["census"]["weights_by_dtype"]


def test_census_counts_int8_weights_in_int8_file_only(exports):
    int8 = exports["int8"].census
    fp32 = exports["fp32"].census
    assert int8["weights_by_dtype"].get("int8", 0) > 0.95 * sum(int8["weights_by_dtype"].values())
    assert "int8" not in fp32["weights_by_dtype"]
    assert fp32["convs_with_int8_weights"] == 0
    assert int8["convs_with_int8_weights"] == int8["convs"] == 20
    # What ORT executes: every conv fused to an integer kernel (uint8 activations), none left float.
    assert int8["runtime"]["float_conv_gemm"] == 0 and int8["runtime"]["integer_conv_gemm"] == 21
    assert fp32["runtime"]["integer_conv_gemm"] == 0
    assert exports["fp16"].census["weights_by_dtype"].keys() == {"fp16"}
    assert exports["int8"].executed_precision == "int8"
    # ORT's CPU provider on x86 has no fp16 conv kernels: it casts the fp16 weights and computes in
    # fp32, and the executed label must say so (elsewhere, e.g. arm64 with fp16 MLAS, it may not).
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert exports["fp16"].executed_precision == "fp32"
        assert exports["fp16"].census["runtime"]["optimized_ops"].get("Cast", 0) > 0
    assert read_manifest(exports["fp16"].path)["metrics"]["executed_precision"] == exports["fp16"].executed_precision


def test_file_loads_in_plain_onnxruntime_without_edgekit(exports, tiny_data):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exports["fp16"].path), providers=["CPUExecutionProvider"])
    x = tiny_data.test_x[:1].float().div(255).numpy()
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (1, 10) and logits.dtype == np.float32  # fp16 inside, float32 contract outside


def test_tampered_export_is_refused(exports, tiny_trained, tiny_data, tmp_path):
    model = onnx.load(str(exports["fp32"].path))
    # Perturb the largest conv weight: a silent corruption the gate must catch.
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(init).copy()
    weights += np.random.default_rng(0).normal(0, 3 * weights.std(), weights.shape).astype(weights.dtype)
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    from edgekit.formats import torch as torch_format
    from edgekit.validate import check

    images = tiny_data.test_x[:128].float().div(255).numpy()
    report = parity(torch_format.load_runner(tiny_trained.checkpoint), onnx_format.load_runner(tampered),
                    images, tiny_data.test_y[:128].numpy())
    with pytest.raises(ParityError, match="worst images"):
        check(report, "onnx", "fp32")


def test_failed_export_is_removed_unless_kept(tiny_trained, tmp_path, monkeypatch):
    # A real ONNX export whose weights are then corrupted in the file before the gate runs.
    real_export = onnx_format.export

    def corrupting_export(source, out, precision, options, calibration, reporter):
        path = real_export(source, out, precision, options, calibration, reporter)
        model = onnx.load(str(path))
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(onnx_format, "export", corrupting_export)
    out = tmp_path / "bad.onnx"
    options = ExportOptions(parity_images=64, debug_parity=True)
    with pytest.raises(ParityError, match="first divergent layer"):
        export_artifact(tiny_trained.checkpoint, "onnx", "fp32", out, options)
    assert not out.exists() and not list(tmp_path.glob(".*staging*"))
    options.keep_failed = True
    with pytest.raises(ParityError):
        export_artifact(tiny_trained.checkpoint, "onnx", "fp32", out, options)
    assert (tmp_path / "bad.failed.onnx").exists() and not out.exists()


def test_dynamic_batch_file_runs_any_batch(tiny_trained, tmp_path, tiny_data):
    result = export_artifact(tiny_trained.checkpoint, "onnx", "fp32", tmp_path / "dyn.onnx",
                             ExportOptions(dynamic_batch=True, parity_images=32))
    runner = onnx_format.load_runner(result.path)
    assert runner.fixed_batch is None
    x = tiny_data.test_x[:7].float().div(255).numpy()
    assert runner.predict(x).shape == (7, 10)
    assert json.loads(result.path.with_name("dyn.onnx.manifest.json").read_text())["config"]["options"]["dynamic_batch"]


def test_static_batch_runner_pads_the_last_chunk(tiny_trained, tmp_path, tiny_data):
    result = export_artifact(tiny_trained.checkpoint, "onnx", "fp32", tmp_path / "b4.onnx",
                             ExportOptions(batch=4, parity_images=30))
    runner = onnx_format.load_runner(result.path)
    assert runner.fixed_batch == 4
    x = tiny_data.test_x[:6].float().div(255).numpy()
    assert np.allclose(runner.predict(x)[4:], runner.predict(x[4:6]), atol=1e-5)


def test_unknown_target_and_precision_and_missing_calibration(tiny_trained):
    with pytest.raises(UnsupportedError, match="unknown export target 'coreml'"):
        export_artifact(tiny_trained.checkpoint, "coreml", "fp32")
    with pytest.raises(UnsupportedError, match="savedmodel cannot hold precision 'int8'"):
        export_artifact(tiny_trained.checkpoint, "savedmodel", "int8")
    with pytest.raises(UnsupportedError, match="onnx cannot hold precision 'int4'"):
        export_artifact(tiny_trained.checkpoint, "onnx", "int4")
    with pytest.raises(ConfigError, match="edgekit calibrate") as info:
        export_artifact(tiny_trained.checkpoint, "onnx", "int8")
    assert "--calibration" in info.value.hint


def test_debug_divergence_maps_every_conv_to_torch(tiny_trained, tiny_data, exports):
    from edgekit.model import load_checkpoint

    model = load_checkpoint(tiny_trained.checkpoint).build()
    images = tiny_data.test_x[:8].float().div(255).numpy()
    debug = onnx_format.debug_divergence(model, exports["fp32"].path, images, tolerance=1e-4)
    assert len(debug["layers"]) == 20 and debug["first_divergent"] is None
    assert debug["layers"][0]["torch_module"] == "bn1"  # BN folded into the stem conv


def test_precision_label_from_counts():
    assert precision_label({"weights_by_dtype": {"fp32": 100}}) == "fp32"
    assert precision_label({"weights_by_dtype": {"int8": 995, "fp32": 5}}) == "int8"
    assert precision_label({"weights_by_dtype": {"int8": 600, "fp32": 400}}) == "mixed(int8 60%, fp32 40%)"
    # What executes wins over what the file holds: QDQ weights run as float convs are not int8.
    census = {"weights_by_dtype": {"int8": 100}, "executed_weights_by_dtype": {"int8": 40, "fp32": 60}}
    assert precision_label(census) == "int8"
    assert precision_label(census, executed=True) == "mixed(int8 40%, fp32 60%)"


def test_export_module_writes_a_qat_fake_quant_model_as_qdq(tmp_path):
    import torch
    from torch.ao.quantization import get_default_qat_qconfig, prepare_qat

    from edgekit.model import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec.from_width(0.125)).eval().fuse_model().train()
    model.qconfig = get_default_qat_qconfig("x86")  # FusedMovingAvgObsFakeQuantize: not exportable as-is
    prepare_qat(model, inplace=True)
    with torch.no_grad():
        model(torch.rand(16, 3, 32, 32))  # observers see data, so scales are real
    model.eval()
    path = onnx_format.export_module(model, tmp_path / "qat.onnx")
    census = onnx_format.census(path)
    assert census["convs_with_int8_weights"] == census["convs"] == 20
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = onnx_format.load_runner(path).predict(x)
    # Same quantization grid; only values above x86's reduced 0..127 activation range differ.
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_int8_file_is_exact_on_x86_without_vnni_read_from_its_own_codes(exports, calibration_file, tiny_data,
                                                                         tmp_path):
    """On an AVX2-only CPU, u8 x s8 kernels add pairs of products into a saturating int16: a file whose
    weights reach 2 x 255 x |w| > 32767 is computed wrongly there (the full-width reference lost 1.5 points:
    benchmarks/results/onnx-weight-bits-cpu-avx2.md).
    Checked from the file's codes, so it fails on any machine, VNNI or not, if the recipe regresses."""
    import onnxruntime as ort

    path = exports["int8"].path
    bound = onnx_format.u8s8_pair_bound(path)
    assert bound["layers"] == 21 and bound["fits_int16"], bound  # 20 convs and fc, every one within int16
    recorded = read_manifest(path)["extra"]["int8_weights"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert recorded == json.loads(props[onnx_format.WEIGHT_RANGE_KEY])  # the file says it too, alone
    assert recorded["reduce_range"] and recorded["max_u8s8_pair_sum"] == bound["max_pair_sum"] <= 32767

    # The check is not vacuous: the earlier recipe (8-bit weights, kept for the weight-bits probe) is
    # flagged from its codes alone, and that file claims no weight record.
    images = tiny_data.train_x[:32].float().div(255).numpy()
    full = onnx_format.quantize_qdq(exports["fp32"].path, tmp_path / "full-range.onnx", images, weight_bits=8)
    assert not onnx_format.u8s8_pair_bound(full)["fits_int16"]
    assert onnx_format.WEIGHT_RANGE_KEY not in {p.key for p in onnx.load(str(full)).metadata_props}
    with pytest.raises(ConfigError, match="7 or 8 bits"):
        onnx_format.quantize_qdq(exports["fp32"].path, tmp_path / "six.onnx", images, weight_bits=6)
    assert not (tmp_path / "six.onnx").exists()

    # The exact int8 arithmetic: with every optimisation off, ORT runs DequantizeLinear -> float Conv ->
    # QuantizeLinear, the file's math with no integer kernel of this CPU in the way; the fused kernels
    # this machine runs must agree with it.
    x = tiny_data.test_x[:64].float().div(255).numpy()

    def logits(level):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])

    exact, fused = logits(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), logits(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert (exact.argmax(1) == fused.argmax(1)).mean() >= 0.98
    cosine = (exact * fused).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(fused, axis=1))
    assert cosine.mean() > 0.99
