"""The int8 ONNX handed to TensorRT: Q/DQ placed where TensorRT's fusions expect them.

TensorRT reads an explicitly quantized (Q/DQ) graph as "this tensor is int8 here" and fuses
around it; ONNX Runtime's `quantize_static` places Q/DQ for ONNX Runtime's own QLinear* kernels,
which is not the same placement. Following NVIDIA's Q/DQ placement recommendations (TensorRT
developer guide, "Explicit Quantization"; the same rules NVIDIA Model Optimizer's ONNX
quantizer applies), the graph written here has:

- Q/DQ on the **inputs of weighted ops** (Conv, depthwise Conv included, and Gemm) whose weights
  are quantized, and on the **skip input of each residual Add** only: ResNet18's shortcut (the
  block input or its downsample conv), MobileNetV2's block input. With the skip input quantized
  and the other input coming straight from a Conv, TensorRT fuses conv + add (+ relu in ResNet18;
  MobileNetV2's projection is linear) into one int8 kernel; Q/DQ on both Add inputs (ONNX
  Runtime's placement) blocks that fusion.
- **no Q/DQ on outputs** of Conv/Add/Gemm and none around Relu, Clip (ReLU6 exports as Clip(0, 6))
  or pooling: TensorRT fuses Conv + BN + Relu/Clip and chooses the output precision of a fused
  kernel from the next Q it meets, so the Q sits after the activation, where the next Conv reads
  it, and an extra Q/DQ pair only splits fusions. The logits leave the Gemm in float.
- **Normalize kept in float**: the input Mul/Add run in float and the stem Conv's input (the
  normalized pixels, signed) is quantized. Quantizing the raw [0, 1] pixels symmetrically would
  use half of int8's range (7-bit input).
- symmetric int8 everywhere, zero points 0 (TensorRT rejects uint8 and non-zero zero points),
  weights per output channel (axis 0), float biases (TensorRT has no int32 DequantizeLinear).

NVIDIA Model Optimizer (`nvidia-modelopt`) produces this placement itself, but it does not
install cleanly beside edgekit: a dry-run pip install of `nvidia-modelopt[onnx]` (0.47.0, checked
here) wants onnxruntime-gpu 1.24 (the same `onnxruntime` module as the CPU onnxruntime 1.32 the
onnx extra uses; two such wheels in one venv break each other), cupy-cuda12x, and onnx 1.21 in
place of 1.23. So the placement is a small post-pass here instead. It reads the graph, not layer
names, so one pass serves both of edgekit's networks: the `quantize_static` output for a float checkpoint (`calibrated_qdq`), or the QDQ graph of an int8
artifact (`formats.onnx.export_qdq_onnx`), whose own activation ranges (QAT, KL, percentile, ...)
are then kept rather than re-measured.

Ranges become symmetric scales: a Q with scale s and zero point z over [qmin, qmax] covers
[(qmin - z) s, (qmax - z) s]; the TensorRT scale is max(|lo|, |hi|) / 127. For torch's x86
post-ReLU activations (0..127 at scale s, written with that scale over ONNX's 0..255, see
onnx._FrozenFakeQuant) the range is read as torch's 0..127 (`activation_range`), so the scale is
s again and the int8 grid is the torch model's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_path
from ..errors import ConfigError, UnsupportedError

WEIGHTED_OPS = ("Conv", "Gemm")
# ops whose output range is inside their input's: a Q after them may take the input's range
# (Clip's, capped at its bounds: ReLU6 after a conv whose own output was quantized)
RANGE_PRESERVING_OPS = ("Flatten", "Reshape", "GlobalAveragePool", "AveragePool", "MaxPool", "Relu", "Clip",
                        "Identity")
INT8_SYMMETRIC_MAX = 127
# ONNX TensorProto element types
_INT8, _UINT8 = 3, 2


@dataclass(frozen=True)
class QuantPoint:
    """One tensor TensorRT should see as int8, with the consumers that read its quantized copy."""

    tensor: str
    amax: float
    consumers: tuple[tuple[str, int], ...]  # (node name, input index)


# ---- reading a QDQ graph -------------------------------------------------------------------------


def _initializers(graph) -> dict:
    return {init.name: init for init in graph.initializer}


def _zero_point_range(elem_type: int) -> tuple[int, int]:
    # int8 as the symmetric band -127..127: ORT's and torch's symmetric int8 scales then come back unchanged
    return (0, 255) if elem_type == _UINT8 else (-INT8_SYMMETRIC_MAX, INT8_SYMMETRIC_MAX)


def activation_ranges(model, activation_range: tuple[int, int] | None = None) -> dict[str, float]:
    """amax (symmetric range) of every float tensor an activation QuantizeLinear quantizes.

    `activation_range`: the codes a uint8 activation really spans when the graph came from a
    model with a reduced range (torch x86: 0..127); default the full 0..255."""
    from onnx import numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    ranges: dict[str, float] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        if scale.size != 1:
            raise UnsupportedError(f"activation {node.input[0]} has a per-channel scale",
                                   "TensorRT activations take one scale per tensor")
        zero_init = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        zero = int(numpy_helper.to_array(zero_init).reshape(-1)[0]) if zero_init is not None else 0
        elem = zero_init.data_type if zero_init is not None else _UINT8
        qmin, qmax = activation_range if activation_range and elem == _UINT8 else _zero_point_range(elem)
        s = float(scale.reshape(-1)[0])
        amax = max(abs((qmin - zero) * s), abs((qmax - zero) * s))
        ranges[node.input[0]] = max(amax, ranges.get(node.input[0], 0.0))
    return ranges


def _strip_activation_qdq(model) -> None:
    """Remove every activation QuantizeLinear -> DequantizeLinear pair; consumers read the float tensor."""
    graph = model.graph
    inits = _initializers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}  # dequantized tensor -> float tensor
    drop = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in inits:
            continue
        q = producers.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        rename[node.output[0]] = q.input[0]
        drop += [node, q]
    for node in {id(n): n for n in drop}.values():
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # a graph output that was a dequantized tensor: its float producer now writes it under that name
    for dequantized, float_name in rename.items():
        if dequantized in outputs:
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == float_name:
                        node.output[i] = dequantized
                for i, name in enumerate(node.input):
                    if name == float_name:
                        node.input[i] = dequantized


def _ancestor_depths(start: str, producers: dict, inits: dict) -> dict[str, int]:
    """Every tensor `start` depends on, with the fewest nodes between them (BFS up the graph)."""
    depths = {start: 0}
    frontier = [start]
    while frontier:
        following = []
        for name in frontier:
            node = producers.get(name)
            if node is None:
                continue
            for parent in node.input:
                if parent and parent not in inits and parent not in depths:
                    depths[parent] = depths[name] + 1
                    following.append(parent)
        frontier = following
    return depths


def skip_input(node, producers: dict, inits: dict) -> int | None:
    """Which input of a two-branch Add is the skip (residual) one: the branch with fewer nodes back to
    where the two branches meet (an identity shortcut has none, against a block's two or three
    convs; a downsample shortcut one conv against two).
    None for an Add with a constant operand (a bias or the Normalize shift)."""
    if len(node.input) != 2 or any(name in inits or not name for name in node.input):
        return None
    a, b = (_ancestor_depths(name, producers, inits) for name in node.input)
    common = set(a) & set(b)
    if not common:
        return None
    meet = min(common, key=lambda name: a[name] + b[name])
    return 0 if a[meet] < b[meet] else 1


def quant_points(model, ranges: dict[str, float]) -> list[QuantPoint]:
    """Where TensorRT wants Q/DQ (see the module doc), each with the range it gets."""
    graph = model.graph
    inits = _initializers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    wanted: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS:
            weight = producers.get(node.input[1])
            # a weighted op whose weight stayed float (a layer kept float on purpose) stays float
            if weight is not None and weight.op_type == "DequantizeLinear":
                wanted.setdefault(node.input[0], []).append((node.name, 0))
        elif node.op_type == "Add":
            index = skip_input(node, producers, inits)
            if index is not None:
                wanted.setdefault(node.input[index], []).append((node.name, index))
    points = []
    for tensor, consumers in wanted.items():
        amax = _range_of(tensor, ranges, producers, inits)
        if amax is None:
            raise UnsupportedError(f"no calibrated range for {tensor}, which TensorRT needs in int8",
                                   "calibrate the float model again, or report the layer")
        points.append(QuantPoint(tensor, amax, tuple(consumers)))
    return points


def _range_of(tensor: str, ranges: dict[str, float], producers: dict, inits: dict) -> float | None:
    cap = np.inf
    while tensor not in ranges:
        node = producers.get(tensor)
        if node is None or node.op_type not in RANGE_PRESERVING_OPS:
            return None
        if node.op_type == "Clip":
            cap = min(cap, _clip_bound(node, inits))
        tensor = node.input[0]
    return min(ranges[tensor], cap)


def _clip_bound(node, inits: dict) -> float:
    """max(|min|, |max|) of a Clip whose bounds are constants (opset 11+ inputs); inf where one is not."""
    from onnx import numpy_helper

    bounds = [name for name in node.input[1:3] if name]
    if len(bounds) < 2 or any(name not in inits for name in bounds):
        return np.inf
    return float(max(abs(numpy_helper.to_array(inits[name]).item()) for name in bounds))


# ---- writing the TensorRT placement ---------------------------------------------------------------


def _insert(model, points: list[QuantPoint]) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    by_name = {node.name: node for node in graph.node}
    new_nodes: dict[str, list] = {}  # producer-less tensors (graph inputs) go first
    producers = {out: node.name for node in graph.node for out in node.output}
    for point in points:
        if point.amax <= 0 or not np.isfinite(point.amax):
            raise UnsupportedError(f"calibrated range of {point.tensor} is {point.amax}",
                                   "the calibration images never reached this layer: check the calibration set")
        base = point.tensor.strip("/").replace("/", "_")
        scale, zero = f"{base}_trt_scale", f"{base}_trt_zero_point"
        quantized, dequantized = f"{point.tensor}_trt_quantized", f"{point.tensor}_trt_dequantized"
        graph.initializer.append(numpy_helper.from_array(np.array(point.amax / INT8_SYMMETRIC_MAX, np.float32), scale))
        graph.initializer.append(helper.make_tensor(zero, TensorProto.INT8, [], [0]))
        pair = [helper.make_node("QuantizeLinear", [point.tensor, scale, zero], [quantized], name=f"{base}_trt_Q"),
                helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized], name=f"{base}_trt_DQ")]
        new_nodes.setdefault(producers.get(point.tensor, ""), []).extend(pair)
        for node_name, index in point.consumers:
            by_name[node_name].input[index] = dequantized
    ordered = list(new_nodes.get("", []))
    for node in graph.node:
        ordered.append(node)
        ordered.extend(new_nodes.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)


def _check_weights(model) -> None:
    """Every weight DequantizeLinear feeding Conv/Gemm: int8, zero points 0, per output channel (axis 0)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        zero = inits.get(dq.input[2]) if len(dq.input) > 2 else None
        weight = inits.get(dq.input[0])
        if (weight is None or weight.data_type != _INT8 or zero is None or zero.data_type != _INT8
                or numpy_helper.to_array(zero).any() or axis != 0):
            raise UnsupportedError(f"the weights of {node.name} are not symmetric per-channel int8 (axis 0)",
                                   "TensorRT needs symmetric int8 weights; quantize with edgekit")


def place_for_tensorrt(model, ranges: dict[str, float] | None = None,
                       activation_range: tuple[int, int] | None = None):
    """A QDQ model (onnx.ModelProto) re-placed for TensorRT in place; returns it.

    `ranges` (tensor -> amax) defaults to the ones the model's own activation Q nodes carry.
    """
    import onnx

    ranges = activation_ranges(model, activation_range) if ranges is None else ranges
    _strip_activation_qdq(model)
    points = quant_points(model, ranges)
    _insert(model, points)
    _check_weights(model)
    onnx.checker.check_model(model)
    return model


def place_file(src: Path, out: Path, activation_range: tuple[int, int] | None = None) -> Path:
    import onnx

    model = place_for_tensorrt(onnx.load(str(src)), activation_range=activation_range)
    with atomic_path(Path(out)) as tmp:
        onnx.save(model, str(tmp))
    return Path(out)


# ---- a float checkpoint: ONNX Runtime's calibration, TensorRT's placement --------------------------


def normalize_nodes(model) -> list[str]:
    """The elementwise ops between the graph input and the first Conv (edgekit's Normalize Mul+Add)."""
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names, tensor = [], graph.input[0].name
    while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in ("Mul", "Add", "Sub", "Div"):
        node = consumers[tensor][0]
        names.append(node.name)
        tensor = node.output[0]
    return names


def calibrated_qdq(src: Path, out: Path, images: np.ndarray, batch: int | None = 1) -> Path:
    """`quantize_static` ranges (MinMax, as the onnx target) on the fp32 graph, placed for TensorRT.

    ONNX Runtime quantizes only Conv, Gemm and Add here and never touches Normalize (its constants
    would otherwise become int8 initializers); the post-pass then keeps the Q/DQ TensorRT wants.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .onnx import calibration_reader

    images = np.ascontiguousarray(images, dtype=np.float32)
    step = batch or 32
    if batch and len(images) < batch:
        raise ConfigError(f"calibration set has {len(images)} images, fewer than the static batch {batch}",
                          "use a larger calibration set or a smaller --batch")
    fp32 = onnx.load(str(src))
    reader = calibration_reader(fp32.graph.input[0].name, images, step, drop_last=bool(batch))
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-qdq-") as scratch:
        ort_out = Path(scratch) / "ort-int8.onnx"
        quantize_static(str(src), str(ort_out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv", "Gemm", "Add"],
                        nodes_to_exclude=normalize_nodes(fp32),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        return place_file(ort_out, out)
