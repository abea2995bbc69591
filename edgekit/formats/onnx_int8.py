"""int8 ONNX on every CPU: why the float-checkpoint path writes 7-bit weights, and how a file shows it.

x86 CPUs without VNNI (AVX2 only) multiply u8 activations by s8 weights with VPMADDUBSW, which
adds each pair of products into a saturating int16: 2 x 255 x 127 = 64,770 does not fit in
32,767. On an AVX2-only EPYC the width-0.5 reference's int8 ONNX (u8 activations, 8-bit per-channel
weights) scored 80.08 % against the fp32 source's 85.55 % (mean cosine 0.937) and its own parity
gate refused it; on AVX-512 VNNI (VPDPBUSD sums into int32) and ARM the same file is fine. Weights
on 7 bits ([-64, 64], ONNX Runtime's documented `reduce_range` for non-VNNI machines) bound the
pair at 2 x 255 x 64 = 32,640, so one file is computed exactly on AVX2, AVX-512 VNNI and ARM alike.
The file and its manifest record this (`weight_record`); `u8s8_pair_bound` reads it back from the
weight codes alone, so a test of it fails on any machine, whatever its CPU, if the recipe regresses.
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
