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
    assert "edgekit[tensorrt]" in REASON or "NVIDIA driver" in REASON


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
    result = export_artifact(tiny_trained.checkpoint, "tensorrt", precision, tmp_path / f"m.{precision}.engine",
                             ExportOptions(parity_images=128))
    assert result.precision == precision
    assert result.manifest.extra["engine"]["compute_capability"]
    assert list(tmp_path.glob("tensorrt-*.timing-cache"))
