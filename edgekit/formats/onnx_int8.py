"""int8 ONNX on every CPU: why the float-checkpoint path writes 7-bit weights, and how a file shows it.

x86 CPUs without VNNI (AVX2 only) multiply u8 activations by s8 weights with VPMADDUBSW, which
adds each pair of products into a saturating int16: 2 x 255 x 127 = 64,770 does not fit in
32,767. On an AVX2-only EPYC the full-width reference's int8 ONNX with 8-bit per-channel weights
(u8 activations) scored 85.98 % against the fp32 file's 87.46 %, 94.9 % top-1 agreement, where
the 7-bit file scored 87.58 % (benchmarks/results/onnx-weight-bits-cpu-avx2.md); on AVX-512 VNNI
(VPDPBUSD sums into int32) and ARM the 8-bit file is computed as written. Weights
on 7 bits ([-64, 64], ONNX Runtime's documented `reduce_range` for non-VNNI machines) bound the
pair at 2 x 255 x 64 = 32,640, so one file is computed exactly on AVX2, AVX-512 VNNI and ARM alike.
The file and its manifest record this (`weight_record`); `u8s8_pair_bound` reads it back from the
weight codes alone, so a test of it fails on any machine, whatever its CPU, if the recipe regresses.

The QDQ graph of a fake-quant model (an int8 artifact's twin, edgekit.qmodel) is made to hold what
an int8 file holds: int8 weight codes (`store_int8_weights`) and int32 bias codes
(`store_int32_biases`), as ONNX Runtime's own quantizer writes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT16_MAX = 32767
WEIGHT_RANGE_KEY = "edgekit_int8_weights"  # metadata_props entry of a file written by quantize_qdq


def u8s8_pair_bound(path_or_model) -> dict[str, Any]:
    """The largest |a1*w1 + a2*w2| a u8 x s8 integer kernel can meet in this QDQ file, read from
    its weight codes alone (activations: any u8 code). Whether it fits int16 decides whether x86
    CPUs without VNNI compute the file exactly; the answer does not depend on the CPU it runs on."""
    import onnx
    from onnx import numpy_helper

    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def dequantized(name: str):
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def code_type(dequantize) -> int:
        source = dequantize.input[2] if len(dequantize.input) > 2 else dequantize.input[0]
        return initializers[source].data_type if source in initializers else onnx.TensorProto.UINT8

    worst, layers = 0, 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        activation, weight = dequantized(node.input[0]), dequantized(node.input[1])
        if activation is None or weight is None or weight.input[0] not in initializers:
            continue  # not an integer layer: ORT runs it in float
        if code_type(activation) != onnx.TensorProto.UINT8 or initializers[weight.input[0]].data_type != onnx.TensorProto.INT8:
            continue  # only u8 activations times s8 weights meet VPMADDUBSW
        codes = numpy_helper.to_array(initializers[weight.input[0]]).astype(np.int64)
        zero = (numpy_helper.to_array(initializers[weight.input[2]]).astype(np.int64)
                if len(weight.input) > 2 and weight.input[2] in initializers else np.zeros(1, np.int64))
        if zero.size > 1:  # per channel, along the output axis
            zero = zero.reshape(-1, *([1] * (codes.ndim - 1)))
        worst = max(worst, 2 * 255 * int(np.abs(codes - zero).max(initial=0)))
        layers += 1
    return {"layers": layers, "max_pair_sum": worst, "fits_int16": worst <= INT16_MAX}


def weight_record(bound: dict[str, Any]) -> dict[str, Any]:
    """What a file made by quantize_qdq says about its int8 weights (metadata and manifest alike)."""
    return {"bits": 7, "range": [-64, 64], "reduce_range": True, "max_u8s8_pair_sum": bound["max_pair_sum"],
            "runs_exactly_on": "any CPU: x86 with or without VNNI (AVX2-only included), ARM",
            "why": "u8 x s8 pair sums must fit int16 on x86 CPUs without VNNI (VPMADDUBSW saturates)"}


def store_int8_weights(model) -> int:
    """Fold QuantizeLinear of constant weights into int8 initializers; returns how many were folded.

    The TorchScript exporter writes a fake-quantized weight as float initializer -> QuantizeLinear
    -> DequantizeLinear, so the file holds fp32 weights and is as large as the fp32 model. Storing
    the quantized values (as ONNX Runtime's own quantizer does) makes an int8 file hold int8.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        if not all(name in initializers for name in node.input[:3]):
            continue
        weight, scale, zero = (numpy_helper.to_array(initializers[name]) for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        quantized = np.clip(np.rint(weight / scale) + zero.astype(np.int64), info.min, info.max).astype(zero.dtype)
        graph.initializer.append(numpy_helper.from_array(quantized, node.output[0]))
        folded.append(node)
    if not folded:
        return 0
    for node in folded:
        graph.node.remove(node)
    still_used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in list(graph.initializer):
        if init.name not in still_used:
            graph.initializer.remove(init)
    return len(folded)


INT32 = np.iinfo(np.int32)


def store_int32_biases(model) -> int:
    """Float biases of integer Conv/Gemm nodes as int32 codes on the grid input scale x weight scale
    (zero point 0, per output channel), dequantized in the graph; returns how many were stored.

    The form ONNX Runtime's quantize_static writes and fuses into QLinearConv / QGemm, and the
    int32 accumulator grid torch's int8 kernels add a bias on, so a step of it is far below one
    output code. Left float, a fake-quant twin's folded-BN biases were 2 % of a width-0.25
    MobileNetV2's stored weights (a 1280-wide head), and the file counted as mixed int8/fp32.
    Run after store_int8_weights: a layer counts as integer when both its input and its weights
    come from DequantizeLinear, the weights from int8 codes.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def dequantized(name: str):
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in initializers:
            return None
        return node, numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)

    stored = 0
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        activation, weight = dequantized(node.input[0]), dequantized(node.input[1])
        bias = initializers[node.input[2]]
        if (activation is None or weight is None or activation[1].size != 1 or bias.data_type != TensorProto.FLOAT
                or initializers.get(weight[0].input[0]) is None
                or initializers[weight[0].input[0]].data_type != TensorProto.INT8):
            continue
        values = numpy_helper.to_array(bias).astype(np.float64)
        scale = (activation[1].reshape(()) * weight[1]).astype(np.float32)
        if not np.all(scale > 0):
            continue
        codes = np.clip(np.rint(values / scale.astype(np.float64)), INT32.min, INT32.max).astype(np.int32)
        name = f"{node.output[0]}_bias_int32"  # per node: slimming may share one bias initializer among several
        graph.initializer.extend([numpy_helper.from_array(codes, name),
                                  numpy_helper.from_array(scale, f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int32), f"{name}_zero_point")])
        dequantize = helper.make_node("DequantizeLinear", [name, f"{name}_scale", f"{name}_zero_point"],
                                      [f"{name}_dequantized"], name=f"{name}_dequantize",
                                      **({"axis": 0} if scale.ndim else {}))
        graph.node.insert(list(graph.node).index(node), dequantize)
        node.input[2] = f"{name}_dequantized"
        stored += 1
    if stored:
        still_used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        for init in list(graph.initializer):
            if init.name not in still_used:
                graph.initializer.remove(init)
    return stored
