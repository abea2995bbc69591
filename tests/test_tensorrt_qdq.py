"""The int8 graph handed to TensorRT: Q/DQ placement checked on the graph, and ONNX Runtime's run of it.

No machine here has TensorRT; these tests check the file TensorRT would parse, not an engine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekit import validate
from edgekit.config import CalibMethod, ExportOptions, QuantizeConfig, QuantMode
from edgekit.formats import onnx as onnx_format
from edgekit.formats import tensorrt as trt_format
from edgekit.formats import tensorrt_qdq
from edgekit.formats.torch import TorchRunner
from edgekit.model import load_checkpoint


class Calibration:
    def __init__(self, images: np.ndarray) -> None:
        self.images = images


@pytest.fixture(scope="module")
def tiny_model(tiny_trained):
    return load_checkpoint(tiny_trained.checkpoint).build().eval()


def _place(model, tiny_data, folder):
    """The int8 ONNX graph tensorrt.prepare_onnx writes for `model` (Q/DQ placed for TensorRT), on disk and loaded."""
    images = tiny_data.train_x[:128].float().div(255).numpy()
    path = trt_format.prepare_onnx(model, folder / "m.int8.onnx", "int8", ExportOptions(dynamic_batch=True),
                                   Calibration(images))
    return path, onnx.load(str(path))


@pytest.fixture(scope="module")
def placed(tiny_model, tiny_data, tmp_path_factory):
    return _place(tiny_model, tiny_data, tmp_path_factory.mktemp("trt-qdq"))


def _graph_maps(model):
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    return graph, inits, producers, consumers


def _is_dequantized_activation(name, producers, inits) -> bool:
    node = producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in inits


def test_every_qdq_is_symmetric_int8_with_zero_points_zero(placed):
    graph, inits, _, _ = _graph_maps(placed[1])
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero = inits[node.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zero).any(), node.name


def test_weights_are_int8_per_output_channel_on_axis_0(placed, tiny_model):
    graph, inits, producers, _ = _graph_maps(placed[1])
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 21  # 20 convolutions (BN folded) and the classifier
    for node in weighted:
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight = inits[dq.input[0]]
        assert weight.data_type == onnx.TensorProto.INT8
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
        assert numpy_helper.to_array(inits[dq.input[1]]).shape == (weight.dims[0],)  # one scale per output channel
        if len(node.input) > 2:  # biases stay float: TensorRT has no int32 DequantizeLinear
            assert node.input[2] in inits and inits[node.input[2]].data_type == onnx.TensorProto.FLOAT


def test_weighted_op_inputs_are_quantized_and_nothing_after_them(placed):
    graph, inits, producers, consumers = _graph_maps(placed[1])
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert _is_dequantized_activation(node.input[0], producers, inits), node.name
        if node.op_type == "Relu":  # no Q/DQ around Relu: it reads the float conv/add output
            assert not _is_dequantized_activation(node.input[0], producers, inits), node.name
    # the logits leave the Gemm in float: no Q/DQ on the output
    assert producers[graph.output[0].name].op_type == "Gemm"
    # a Conv's output is quantized only where it is the skip input of a residual Add (downsample)
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        source = producers[node.input[0]]
        if source.op_type == "Conv":
            assert "downsample" in source.name
            readers = {c.op_type for dq, _ in consumers[node.output[0]] for c, _ in consumers[dq.output[0]]}
            assert readers == {"Add"}


def test_only_the_skip_input_of_each_residual_add_is_quantized(placed):
    graph, inits, producers, _ = _graph_maps(placed[1])
    residual = [n for n in graph.node if n.op_type == "Add" and not any(i in inits for i in n.input)]
    assert len(residual) == 8  # one per BasicBlock
    for node in residual:
        # the branch that TensorRT fuses into the add is conv2's output (read in float); the other one
        # is the shortcut: the block input, or the downsample conv's output
        kinds = [_is_dequantized_activation(name, producers, inits) for name in node.input]
        main = [name for name in node.input if producers[name].op_type == "Conv" and "conv2" in producers[name].name]
        assert len(main) == 1, node.name
        assert kinds == [name != main[0] for name in node.input], node.name


def test_normalize_stays_float_with_its_exact_constants(placed, tiny_model):
    graph, inits, producers, consumers = _graph_maps(placed[1])
    mul, = [n for n, _ in consumers[graph.input[0].name]]
    assert mul.op_type == "Mul"
    add, = [n for n, _ in consumers[mul.output[0]]]
    assert add.op_type == "Add"
    constants = [numpy_helper.to_array(inits[name]) for node in (mul, add) for name in node.input if name in inits]
    assert len(constants) == 2 and all(c.dtype == np.float32 for c in constants)
    assert np.array_equal(constants[0].reshape(-1), tiny_model.normalize.scale.numpy().reshape(-1))
    assert np.array_equal(constants[1].reshape(-1), tiny_model.normalize.shift.numpy().reshape(-1))
    # the normalized (signed) pixels are what gets quantized, for the stem conv
    q, = [n for n, _ in consumers[add.output[0]]]
    assert q.op_type == "QuantizeLinear"


def test_onnxruntime_run_of_the_tensorrt_graph_matches_its_source(placed, tiny_model, tiny_data):
    images = tiny_data.test_x[:256].float().div(255).numpy()
    labels = tiny_data.test_y[:256].numpy()
    report = validate.parity(TorchRunner(tiny_model), onnx_format.load_runner(placed[0]), images, labels)
    assert validate.violations(report, "tensorrt", "int8") == []


@pytest.fixture(scope="module")
def int8_artifact(tiny_trained, tiny_data, tiny_calibration, tmp_path_factory):
    from edgekit.quantize import quantize_checkpoint

    root = tmp_path_factory.mktemp("trt-int8-artifact")
    out = root / "ptq.pt"
    quantize_checkpoint(tiny_trained.checkpoint, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax,
                                                                calibration=str(tiny_calibration), latency_runs=5,
                                                                export_onnx=False), out, data=tiny_data)
    return out


def _torch_activation_scales(qmodel) -> list[float]:
    scales = []
    for module in qmodel.modules():
        scale = getattr(module, "scale", None)
        if isinstance(scale, (float, torch.Tensor)):  # quantized modules' output scale (weights are per-channel)
            value = torch.as_tensor(scale).reshape(-1)
            if value.numel() == 1:
                scales.append(float(value[0]))
    return scales


def test_int8_artifact_keeps_its_own_ranges_and_matches_the_torch_int8_model(int8_artifact, tiny_data, tmp_path,
                                                                              monkeypatch):
    from edgekit.qmodel import load_quantized
    from edgekit.formats.torch import load_runner as int8_runner

    path = trt_format.prepare_source_onnx(int8_artifact, tmp_path / "a.int8.onnx", "int8",
                                          ExportOptions(dynamic_batch=True))
    model = onnx.load(str(path))
    graph, inits, producers, _ = _graph_maps(model)
    torch_scales = np.array(_torch_activation_scales(load_quantized(int8_artifact)[0]))
    relu_scales = [float(numpy_helper.to_array(inits[n.input[1]])) for n in graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] in producers
                   and producers[n.input[0]].op_type == "Relu"]
    assert len(relu_scales) >= 16  # stem + 8 inner + 8 block outputs (some shared by two consumers)
    # after a ReLU, torch's x86 activations are 0..127 at scale s; symmetric int8 over the same range
    # is scale s again: the TensorRT grid is the torch model's own, not a new min-max calibration
    for scale in relu_scales:
        assert np.isclose(torch_scales, scale, rtol=1e-5, atol=0).any(), scale
    # the same placement rules as for a float checkpoint
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert _is_dequantized_activation(node.input[0], producers, inits), node.name
    assert producers[graph.output[0].name].op_type == "Gemm"
    # the right parent: the torch int8 model. On this near-chance tiny model two int8 renderings flip a
    # few images (see test_quantize), so the accuracy-drop bar is loosened; agreement and cosine are not.
    from edgekit.formats import FORMATS

    tolerances = FORMATS["tensorrt"].tolerances
    monkeypatch.setitem(tolerances, "int8", dataclasses.replace(tolerances["int8"], max_drop_vs_int8_source=5.0))
    images = tiny_data.test_x[:256].float().div(255).numpy()
    labels = tiny_data.test_y[:256].numpy()
    report = validate.parity(int8_runner(int8_artifact), onnx_format.load_runner(path), images, labels)
    assert validate.violations(report, "tensorrt", "int8", source_precision="int8") == []


def test_skip_input_is_the_shorter_branch():
    from onnx import TensorProto, helper

    # x -> Conv a -> Conv b -> Add(b, c) with c = Conv d(x): the downsample-like branch (one conv) is the skip
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Neg", ["r"], ["a"], name="a"), helper.make_node("Neg", ["a"], ["b"], name="b"),
             helper.make_node("Neg", ["r"], ["c"], name="c"), helper.make_node("Add", ["b", "c"], ["y"], name="add"),
             helper.make_node("Add", ["y", "r"], ["z"], name="identity_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    producers = {out: n for n in graph.node for out in n.output}
    assert tensorrt_qdq.skip_input(graph.node[4], producers, {}) == 1
    assert tensorrt_qdq.skip_input(graph.node[5], producers, {}) == 1  # the identity shortcut


def test_a_q_after_clip_takes_the_conv_range_capped_at_the_clip_bound():
    # Conv -> Q/DQ -> Clip(0, 6) -> Conv, as a torch int8 model with ReLU6 exports: the second conv's input
    # has no Q of its own after the strip, so it takes the first conv's range, capped at 6 by the Clip
    from onnx import TensorProto, helper

    def q(name, amax):
        return [numpy_helper.from_array(np.array(amax / 127, np.float32), f"{name}_s"),
                helper.make_tensor(f"{name}_z", TensorProto.INT8, [], [0])]

    def weight(name):
        return [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), f"{name}_w"),
                numpy_helper.from_array(np.full(2, 0.01, np.float32), f"{name}_ws"),
                numpy_helper.from_array(np.zeros(2, np.int8), f"{name}_wz")]

    inits = [*q("x", 1.0), *q("a", 10.0), *weight("c1"), *weight("c2"),
             numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="xd")]
    for conv in ("c1", "c2"):
        nodes.append(helper.make_node("DequantizeLinear", [f"{conv}_w", f"{conv}_ws", f"{conv}_wz"], [f"{conv}_wd"],
                                      name=f"{conv}_wd", axis=0))
    nodes += [helper.make_node("Conv", ["xd", "c1_wd"], ["a"], name="c1"),
              helper.make_node("QuantizeLinear", ["a", "a_s", "a_z"], ["aq"], name="aq"),
              helper.make_node("DequantizeLinear", ["aq", "a_s", "a_z"], ["ad"], name="ad"),
              helper.make_node("Clip", ["ad", "lo", "hi"], ["r"], name="relu6"),
              helper.make_node("Conv", ["r", "c2_wd"], ["y"], name="c2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    model = tensorrt_qdq.place_for_tensorrt(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    _, inits, producers, _ = _graph_maps(model)
    clip, = [n for n in model.graph.node if n.op_type == "Clip"]
    assert producers[clip.input[0]].op_type == "Conv"  # the Q/DQ between the conv and the Clip is gone
    second, = [n for n in model.graph.node if n.name == "c2"]
    dq = producers[second.input[0]]
    assert dq.op_type == "DequantizeLinear" and dq.input[0] not in inits
    assert float(numpy_helper.to_array(inits[dq.input[1]])) == pytest.approx(6 / 127)


# ---- MobileNetV2: depthwise convs, ReLU6 as Clip, residual adds without a ReLU -------------------


@pytest.fixture(scope="module")
def mobilenet(tiny_mobilenet_trained):
    """The session's trained width-0.25 MobileNetV2 (conftest)."""
    return load_checkpoint(tiny_mobilenet_trained.checkpoint).build().eval()


@pytest.fixture(scope="module")
def mobilenet_placed(mobilenet, tiny_data, tmp_path_factory):
    return _place(mobilenet, tiny_data, tmp_path_factory.mktemp("trt-qdq-mb"))


def test_mobilenet_v2_every_conv_and_gemm_input_is_quantized_none_around_clip(mobilenet_placed, mobilenet):
    graph, inits, producers, consumers = _graph_maps(mobilenet_placed[1])
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    depthwise = [n for n in weighted if next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    assert len(weighted) == 52 + 1 and len(depthwise) == 17  # stem, 16 expand, 17 depthwise, 17 project, head; fc
    for node in weighted:
        assert _is_dequantized_activation(node.input[0], producers, inits), node.name
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0  # per output channel, depthwise too
    # ReLU6 is Clip(0, 6): every one is still there, fused by TensorRT with the conv before it, so it reads
    # that conv's float output (no Q/DQ between them), and pooling reads the head's Clip in float
    clips = [n for n in graph.node if n.op_type == "Clip"]
    assert len(clips) == sum(isinstance(m, torch.nn.ReLU6) for m in mobilenet.modules())
    for node in clips + [n for n in graph.node if n.op_type == "GlobalAveragePool"]:
        assert not _is_dequantized_activation(node.input[0], producers, inits), node.name
    for clip in clips:
        assert producers[clip.input[0]].op_type == "Conv", clip.name
    # a Q/DQ pair exists only for a weighted op's input or an Add's skip input: nothing else reads one
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
            assert {c.op_type for c, _ in consumers[node.output[0]]} <= {"Conv", "Gemm", "Add"}, node.name
    assert producers[graph.output[0].name].op_type == "Gemm"  # the logits leave in float


def test_mobilenet_v2_each_residual_add_quantizes_only_its_block_input(mobilenet_placed, mobilenet):
    graph, inits, producers, _ = _graph_maps(mobilenet_placed[1])
    residual = [n for n in graph.node if n.op_type == "Add" and not any(i in inits for i in n.input)]
    blocks = [block for stage in mobilenet.stages for block in stage]
    assert len(residual) == sum(block.use_residual for block in blocks) == 12
    for node in residual:
        quantized = [_is_dequantized_activation(name, producers, inits) for name in node.input]
        assert sum(quantized) == 1, node.name
        main = node.input[quantized.index(False)]
        # the other input comes straight from the projection conv (TensorRT fuses conv3 + add) ...
        assert producers[main].op_type == "Conv" and "conv3" in producers[main].name, node.name
        # ... and the quantized one is the block's input: the same dequantized tensor its first conv reads
        block = node.name.rsplit("/", 2)[0] + "/"  # "/layer2/layer2.1/add/Add" -> "/layer2/layer2.1/"
        skip = node.input[quantized.index(True)]
        assert any(n.op_type == "Conv" and n.name.startswith(block) and n.input[0] == skip for n in graph.node), node.name


def test_mobilenet_v2_onnxruntime_run_of_the_tensorrt_graph_stays_near_the_float_model(mobilenet_placed, mobilenet,
                                                                                       tiny_data):
    images = tiny_data.test_x[:256].float().div(255).numpy()
    labels = tiny_data.test_y[:256].numpy()
    report = validate.parity(TorchRunner(mobilenet), onnx_format.load_runner(mobilenet_placed[0]), images, labels)
    print(f"float {report.source_accuracy:.1%}, agreement {report.top1_agreement:.1%}, "
          f"min cosine {report.cosine_min:.4f}")
    assert report.source_accuracy > 0.6  # six times chance: the comparison is not of two constant answers
    # the format table's int8 tolerances as they stand, on the session's trained model
    assert validate.violations(report, "tensorrt", "int8") == []
