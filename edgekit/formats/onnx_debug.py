"""--debug-parity for ONNX: where does the exported graph first diverge from torch?

Split from onnx.py (its export, runner and census); `edgekit.formats.onnx.debug_divergence`
is this function, so the format table's module offers it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def debug_divergence(model, path: Path, images: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Expose every Conv output of the ONNX graph, compare it with the torch module's output.

    Conv nodes exported by TorchScript are named after their module path ("/layer1/layer1.0/conv1/Conv"),
    and BN is folded into them, so each maps to the BatchNorm that follows the torch conv when
    there is one. Returns the per-layer relative max error in graph order and the first layer
    beyond `tolerance` (best effort: unmapped nodes are skipped).
    """
    import onnx
    import onnxruntime as ort
    import torch

    onnx_model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = onnx_model.graph
    modules = dict(model.named_modules())
    mapping: list[tuple[str, str, str]] = []  # (onnx tensor, node name, torch module)
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        conv_name = _module_path(node.name)
        bn_name = _following_bn(conv_name, modules)
        if conv_name in modules:
            mapping.append((node.output[0], node.name, bn_name or conv_name))
    if not mapping:
        return {"layers": [], "first_divergent": None, "note": "no Conv node names map to torch modules"}
    existing = {o.name for o in graph.output}
    known = {vi.name: vi for vi in graph.value_info}
    for tensor, _, _ in mapping:
        if tensor not in existing:
            graph.output.append(known.get(tensor) or onnx.helper.make_empty_tensor_value_info(tensor))
    captured: dict[str, np.ndarray] = {}
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, output, name=name: captured.__setitem__(name, output.detach().float().numpy().copy()))
        for name in {m for _, _, m in mapping}]
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    finally:
        for hook in hooks:
            hook.remove()
    with tempfile.TemporaryDirectory(prefix="edgekit-debug-") as scratch:
        debug_path = Path(scratch) / "debug.onnx"
        onnx.save(onnx_model, str(debug_path))
        session = ort.InferenceSession(str(debug_path), _session_options(), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        feed = np.ascontiguousarray(images, dtype=np.float16 if inp.type == "tensor(float16)" else np.float32)
        fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if fixed is not None:
            feed = feed[:fixed]
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, {inp.name: feed})))
    layers, first = [], None
    for tensor, node_name, module_name in mapping:
        ref = captured[module_name][: len(feed)]
        got = outputs[tensor].astype(np.float32)
        if ref.shape != got.shape:
            continue
        scale = float(np.abs(ref).max()) or 1.0
        rel = float(np.abs(ref - got).max()) / scale
        layers.append({"onnx_node": node_name, "torch_module": module_name, "relative_max_error": rel})
        if first is None and rel > tolerance:
            first = layers[-1]
    return {"layers": layers, "first_divergent": first, "tolerance": tolerance}


def _module_path(node_name: str) -> str:
    """'/layer2/layer2.0/downsample/downsample.0/Conv' -> 'layer2.0.downsample.0' (TorchScript scope names)."""
    full = leaf = ""
    for part in [p for p in node_name.split("/") if p][:-1]:
        if leaf and part.startswith(leaf + "."):
            full += part[len(leaf):]
        else:
            full = f"{full}.{part}" if full else part
        leaf = part
    return full


def _following_bn(conv_name: str, modules: dict) -> str | None:
    """The BatchNorm folded into a conv: conv1 -> bn1, layerX.Y.conv2 -> layerX.Y.bn2, downsample.0 -> .1."""
    head, _, leaf = conv_name.rpartition(".")
    candidates = []
    if leaf.startswith("conv"):
        candidates.append((head + "." if head else "") + "bn" + leaf[4:])
    if leaf.isdigit():
        candidates.append((head + "." if head else "") + str(int(leaf) + 1))
    for name in candidates:
        if name in modules and type(modules[name]).__name__.startswith("BatchNorm"):
            return name
    return None


def _session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so
