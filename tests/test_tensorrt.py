"""TensorRT: what runs without it (ONNX preparation, refusal messages) and the real build where it can."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.config import ExportOptions
from edgekit.errors import DependencyError
from edgekit.export import export_artifact
from edgekit.formats import onnx as onnx_format
from edgekit.formats import tensorrt as trt_format
from edgekit.model import load_checkpoint

REASON = trt_format.unavailable_reason()


@pytest.fixture(scope="module")
def tiny_model(tiny_trained):
    return load_checkpoint(tiny_trained.checkpoint).build()


def test_unavailable_reason_names_the_fix_when_missing():
    if REASON is None:
        pytest.skip("TensorRT and a GPU are available here")
    # a missing package names both CUDA builds' extras; a GPU/driver problem names the driver
    assert ("edgekit[tensorrt-cu12]" in REASON and "edgekit[tensorrt-cu13]" in REASON) or "driver" in REASON


def test_export_refuses_with_the_install_hint_when_unavailable(tiny_trained):
    if REASON is None:
        pytest.skip("TensorRT and a GPU are available here")
    with pytest.raises(DependencyError, match="cannot export to tensorrt") as info:
        export_artifact(tiny_trained.checkpoint, "tensorrt", "fp16")
    assert info.value.hint == "pip install 'edgekit[tensorrt]'"


@pytest.mark.parametrize("dynamic", [False, True])
def test_prepared_onnx_has_the_requested_batch_and_matches_torch(tiny_model, tmp_path, tiny_data, dynamic):
    options = ExportOptions(batch=4, dynamic_batch=dynamic) if not dynamic else ExportOptions(dynamic_batch=True)
    path = trt_format.prepare_onnx(tiny_model, tmp_path / "m.onnx", "fp32", options)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert (dim.dim_param == "batch") if dynamic else (dim.dim_value == 4)
    x = tiny_data.test_x[:4].float().div(255)
    import torch

    with torch.no_grad():
        expected = tiny_model(x).numpy()
    assert np.allclose(onnx_format.load_runner(path).predict(x.numpy()), expected, atol=1e-4)


def test_prepared_int8_onnx_is_symmetric_qdq_as_tensorrt_requires(tiny_model, tmp_path, tiny_data):
    class Calibration:
        images = tiny_data.train_x[:64].float().div(255).numpy()

    path = trt_format.prepare_onnx(tiny_model, tmp_path / "q.onnx", "int8", ExportOptions(dynamic_batch=True),
                                   Calibration)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points
    # TensorRT takes int8 (not uint8) QDQ with zero point 0 only.
    assert all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert all(not numpy_helper.to_array(z).any() for z in zero_points)


@pytest.mark.skipif(REASON is not None, reason=f"TensorRT build/run needs TensorRT and a GPU: {REASON}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_runs_and_passes_the_gate(tiny_trained, tmp_path, precision):
    # 256 parity images: the fp16 row's 99.5 % agreement then allows one flip (with 128 it allowed none)
    result = export_artifact(tiny_trained.checkpoint, "tensorrt", precision, tmp_path / f"m.{precision}.engine",
                             ExportOptions(parity_images=256, dynamic_batch=True))
    assert result.precision == precision
    assert result.manifest.extra["engine"]["compute_capability"]
    assert list(tmp_path.glob("tensorrt-*.timing-cache"))
    # a batch above the profile's maximum runs in chunks and returns every row
    runner = trt_format.load_runner(result.path)
    images = np.random.default_rng(0).random((trt_format.DYNAMIC_MAX_BATCH + 44, 3, 32, 32), dtype=np.float32)
    logits = runner.predict(images)
    assert logits.shape[0] == len(images)
    assert np.allclose(logits[-44:], runner.predict(images[-44:]), atol=1e-3)


@pytest.mark.skipif(REASON is not None, reason=f"TensorRT build/run needs TensorRT and a GPU: {REASON}")
def test_int8_engine_builds_passes_the_gate_and_runs_int8(tiny_trained, tiny_data, tiny_data_config, tmp_path):
    from edgekit.calibrate import make_calibration, save_calibration

    cal = save_calibration(make_calibration(tiny_data, tiny_data_config, size=128), tmp_path / "cal.json")
    result = export_artifact(tiny_trained.checkpoint, "tensorrt", "int8", tmp_path / "m.int8.engine",
                             ExportOptions(calibration=str(cal), dynamic_batch=True))
    assert result.census["weights_by_dtype"].get("int8", 0) > 0
    assert result.census["layers_by_output_dtype"].get("int8", 0) > 0


# ---- engine-inspector census, on recorded inspector JSON ---------------------------------------
# TensorRT 10 layout, one "Format/Datatype" string per tensor. Recorded by a user from a TensorRT 10
# engine in NVIDIA/TensorRT issue #3876 ("Inquiry about Layer Performance of FP16",
# https://github.com/NVIDIA/TensorRT/issues/3876), trimmed to the fields the census reads.
TRT10_FP16_LAYER = {
    "Name": "/model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
    "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "/model.1/act/Relu_output_0", "Location": "Device", "Dimensions": [1, 50, 160, 160],
                "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
    "Outputs": [{"Name": "Reformatted Output Tensor 0 to /model.2/cv1/conv/Conv + /model.2/cv1/act/Relu",
                 "Location": "Device", "Dimensions": [1, 25, 160, 160],
                 "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
    "ParameterType": "Convolution",
    "Weights": {"Type": "Half", "Count": 1250},
    "Bias": {"Type": "Half", "Count": 25},
}
# The kDETAILED example of NVIDIA's TensorRT Developer Guide, "Engine Inspector" section
# (docs.nvidia.com/deeplearning/tensorrt/.../inference-library/engine-tools.html; read here in a
# translation of the guide that reproduces the JSON verbatim), trimmed likewise.
GUIDE_INT8_LAYER = {
    "Name": "node_of_gpu_0/res4_0_branch2a_1 + node_of_gpu_0/res4_0_branch2a_bn_1 + node_of_gpu_0/res4_0_branch2a_bn_2",
    "LayerType": "CaskConvolution",
    "Inputs": [{"Name": "gpu_0/res3_3_branch2c_bn_3", "Dimensions": [16, 512, 28, 28],
                "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
    "Outputs": [{"Name": "gpu_0/res4_0_branch2a_bn_2", "Dimensions": [16, 256, 28, 28],
                 "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
    "ParameterType": "Convolution",
    "Weights": {"Type": "Int8", "Count": 131072},
    "Bias": {"Type": "Float", "Count": 256},
}
# TensorRT 11 layout: the type and the format are separate fields. From NVIDIA's "Migrating
# IEngineInspector Usage from TensorRT 10.x to 11.x" (docs.nvidia.com/deeplearning/tensorrt/11.0.0/
# api/migration/tensorrt-10x-to-11x-IEngineInspector.html), its "I/O Tensors" example. (The same
# page's per-layer example was not readable here; the census reads layer tensors with the same keys.)
TRT11_IO_TENSORS = [
    {"Name": "input_0", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 3, 224, 224], "Location": "Device",
     "IsShapeInferenceIO": False,
     "ProfileInfo": [{"MinShape": [1, 3, 224, 224], "OptShape": [1, 3, 224, 224], "MaxShape": [1, 3, 224, 224],
                      "Format": "Row major linear FP32 format (kLINEAR)"}]},
    {"Name": "output_0", "IOMode": "Output", "DataType": "Float", "Dimensions": [1, 1000], "Location": "Device",
     "IsShapeInferenceIO": False},
]


def test_census_reads_tensorrt_10_format_strings():
    census = trt_format.census_from_inspector({"Layers": [TRT10_FP16_LAYER, GUIDE_INT8_LAYER]})
    assert census["layers"] == 2
    assert census["layers_by_output_dtype"] == {"fp16": 1, "int8": 1}
    assert census["weights_by_dtype"] == {"fp16": 1250, "int8": 131072}


def test_census_reads_tensorrt_11_split_fields():
    layer = {"Name": "conv", "LayerType": "CaskConvolution",
             "Outputs": [{"Name": "y", "DataType": "Half", "Format": "Channel major FP16 format where channel % 8 == 0"}],
             "Weights": {"Type": "Half", "Count": 10}}
    census = trt_format.census_from_inspector({"Layers": [layer], "I/O Tensors": TRT11_IO_TENSORS})
    assert census["layers_by_output_dtype"] == {"fp16": 1}
    assert census["io_dtypes"] == {"input_0": "fp32", "output_0": "fp32"}
    # the format string alone (the ProfileInfo "Format") also names the type
    assert trt_format.tensor_dtype(TRT11_IO_TENSORS[0]["ProfileInfo"][0]) == "fp32"


@pytest.mark.parametrize("text, dtype", [
    ("Row major linear FP32 format (kLINEAR)", "fp32"), ("Row major linear FP32", "fp32"),
    ("Channel major FP16 format where channel % 4 == 0", "fp16"), ("Float", "fp32"), ("Half", "fp16"),
    ("Int8", "int8"), ("Int32", "int32"), ("BFloat16", "bf16"), ("N/A due to dynamic shapes", "unknown")])
def test_inspector_type_words(text, dtype):
    # "Int32" (TensorRT's DataType.INT32: shape and index tensors) is not int8 arithmetic
    assert trt_format.inspector_dtype(text) == dtype


# ---- runner and install pieces that run without a GPU ------------------------------------------


def test_batches_above_the_profile_maximum_run_in_chunks():
    from edgekit.timing import predict_batched

    seen = []

    def engine(chunk):  # what the runner's _run returns: one row of logits per image
        seen.append(len(chunk))
        return chunk[:, :1, 0, 0] * 2

    images = np.random.default_rng(0).random((600, 3, 4, 4), dtype=np.float32)
    out = predict_batched(engine, images, trt_format.DYNAMIC_MAX_BATCH)
    assert seen == [256, 256, 88] and np.array_equal(out, images[:, :1, 0, 0] * 2)
    # a fixed-batch engine gets exactly its batch: the short last chunk padded, the padding's rows dropped
    seen.clear()
    out = predict_batched(engine, images[:5], 4, pad=True)
    assert seen == [4, 4] and np.array_equal(out, images[:5, :1, 0, 0] * 2)
    assert 1 < trt_format.DYNAMIC_OPT_BATCH <= trt_format.DYNAMIC_MAX_BATCH


def test_insufficient_driver_message_names_driver_and_runtime():
    message = trt_format.insufficient_driver_message(12040, 13000)
    assert "CUDA 12.4" in message and "CUDA 13.0" in message and "edgekit[tensorrt-cu12]" in message
    assert "tensorrt-cu12" not in trt_format.insufficient_driver_message(11080, 12060)


def test_cuda_12_and_13_extras_pair_tensorrt_with_the_same_cuda_python_major():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["tensorrt-cu12"] == ["tensorrt-cu12>=10", "cuda-python>=12,<13"]
    assert extras["tensorrt-cu13"] == ["tensorrt-cu13>=10", "cuda-python>=13,<14"]
    assert extras["tensorrt"] == ["edgekit[tensorrt-cu12]"]  # the format table's extra: the wider-driver build
