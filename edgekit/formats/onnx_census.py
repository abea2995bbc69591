"""The ONNX census: weights and ops counted by dtype from the file, and how ORT executes them.

Split from onnx.py (export and runner); `edgekit.formats.onnx.census` is this module's `census`.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FLOAT_TYPES = {1: "fp32", 10: "fp16", 11: "fp64", 16: "bf16"}
QUANT_TYPES = {2: "int8", 3: "int8", 6: "int32"}  # uint8, int8, int32 (quantized bias)


def _qparam_names(graph) -> set[str]:
    """Initializers that are scales / zero points of Q/DQ nodes: quantization parameters, not weights."""
    names = set()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"):
            inputs = list(node.input)
            keep = {0} if node.op_type in ("QuantizeLinear", "DequantizeLinear") else {0, 3, 6, 8}
            names.update(name for i, name in enumerate(inputs) if i not in keep and name)
    return names


def _dtype_name(elem_type: int) -> str:
    return FLOAT_TYPES.get(elem_type) or QUANT_TYPES.get(elem_type) or f"type{elem_type}"


def load_file(path: Path, load_external_data: bool = True):
    """onnx.load of a file a user passed: missing, a folder, empty or damaged is one CheckpointError."""
    import onnx

    from ..errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {'is a folder' if path.is_dir() else 'not found'}: {path}",
                              "pass an .onnx file written by `edgekit export --target onnx`")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CheckpointError(f"cannot read {path}: the ONNX file is empty, truncated or corrupt",
                              "copy it again, or re-export it with `edgekit export --target onnx`") from exc
    if not model.graph.node:  # an empty file parses as an empty model
        raise CheckpointError(f"cannot read {path}: the ONNX file holds no graph (empty or truncated)",
                              "copy it again, or re-export it with `edgekit export --target onnx`")
    return model


def census(path: Path, runtime: bool = True) -> dict[str, Any]:
    """Weights counted by dtype from the file, and convolutions as ORT actually executes them.

    `weights_by_dtype`: elements of every initializer except Q/DQ scales and zero points (int32
    quantized biases count as int8 arithmetic). `runtime`: the graph after ORT's optimizer, where
    a QDQ Conv either became QLinearConv (integer) or stayed Conv (float); `executed_weights_by_dtype`
    counts conv/gemm weights by how they run (`precision_label(census, executed=True)`).
    """
    model = load_file(path)
    graph = model.graph
    qparams = _qparam_names(graph)
    weights: collections.Counter[str] = collections.Counter()
    for init in graph.initializer:
        if init.name in qparams:
            continue
        dtype = _dtype_name(init.data_type)
        weights["int8" if dtype == "int32" else dtype] += int(np.prod(init.dims)) if init.dims else 1
    producers = {out: node for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    qdq_convs = sum(1 for n in convs if n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear")
    result: dict[str, Any] = {
        "format": "onnx",
        "weights_by_dtype": dict(weights),
        "ops": dict(collections.Counter(n.op_type for n in graph.node)),
        "convs": len(convs),
        "convs_with_int8_weights": qdq_convs,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
    }
    if runtime:
        result["runtime"] = runtime_census(path)
        result["executed_weights_by_dtype"] = result["runtime"].pop("executed_weights_by_dtype")
    return result


def runtime_census(path: Path) -> dict[str, Any]:
    """Let ORT optimize the graph (as a session would) and count how each Conv/Gemm will execute."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekit-census-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # EXTENDED: the QDQ -> QLinear* fusions, without the NCHWc layout rewrite that ORT_ENABLE_ALL
        # adds (machine-specific and not serializable as plain ONNX ops).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(optimized)
        try:
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types for a graph it cannot load
            from ..errors import CheckpointError

            raise CheckpointError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}",
                                  "re-export the file with `edgekit export --target onnx`") from exc
        model = onnx.load(str(optimized))
    graph = model.graph
    sizes = {init.name: (int(np.prod(init.dims)) if init.dims else 1, init.data_type) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def weight_size(name: str) -> tuple[int, str]:
        node = producers.get(name)
        if node is not None and node.op_type in ("DequantizeLinear", "Cast"):
            # A conv fed by dequantized weights computes in float; so does one fed by ORT's inserted
            # Casts (x86 has no fp16 conv kernel: fp16 weights are stored, fp32 arithmetic runs).
            numel, _ = sizes.get(node.input[0], (0, 1))
            if node.op_type == "DequantizeLinear":
                return numel, "fp32"
            to = next((a.i for a in node.attribute if a.name == "to"), 1)
            return numel, _dtype_name(to)
        numel, elem = sizes.get(name, (0, 1))
        return numel, _dtype_name(elem)

    executed: collections.Counter[str] = collections.Counter()
    integer_ops = float_ops = 0
    float_names = []
    for node in graph.node:
        if node.op_type in ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger"):
            integer_ops += 1
            index = 3 if node.op_type in ("QLinearConv", "QGemm", "QLinearMatMul") else 1
            numel, _ = weight_size(node.input[index])
            executed["int8"] += numel
        elif node.op_type in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm"):
            float_ops += 1
            float_names.append(node.name)
            numel, dtype = weight_size(node.input[1])
            executed["int8" if dtype == "int8" else dtype] += numel
    return {"integer_conv_gemm": integer_ops, "float_conv_gemm": float_ops,
            # names only when int8 and float are mixed: the list that says which layers did not fuse
            "float_conv_gemm_nodes": float_names if integer_ops else [],
            "optimized_ops": dict(collections.Counter(n.op_type for n in graph.node)),
            "executed_weights_by_dtype": dict(executed)}
