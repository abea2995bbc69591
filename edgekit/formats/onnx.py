"""ONNX: export (fp32, fp16, QDQ int8) and an ONNX Runtime runner.

fp32 comes from the legacy TorchScript exporter in eval mode, so BatchNorm folds into Conv at
export, then onnxslim tidies the graph. fp16 converts the weights and keeps float32 inputs and
outputs (the runner contract stays float32). int8 is QDQ from `quantize_static` over the shared
calibration set: per-channel int8 weights, uint8 activations.

Why uint8 activations, measured here (benchmarks/onnx_int8_probe.py): the file of a QDQ model
says "int8" for every Conv either way, but what runs is decided later by ORT's graph optimizer,
which fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv. With int8 (S8S8)
activations ORT 1.32 on x86 fused only the 8 convs fed by a block's inner ReLU; the 12 convs
fed by a residual output or the normalized input (stem, conv1 of every block, downsample) ran
as DQ -> float Conv -> Q, slower than plain fp32. That is the "12 of 20 convolutions stayed
float" seen on the pruned model; it is the same 12 on the unpruned one. With uint8 activations
(U8S8) all 20 fuse. Optimizing the fp32 graph with ORT before quantizing is the other trap:
its Conv+ReLU fusion makes FusedConv nodes that `quantize_static` does not know, so 9 convs stay
float. So the census below counts both what the file holds and what ORT actually executes.
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_path
from ..errors import CheckpointError, ConfigError, missing_dependency
from ..report import Reporter, quiet
from . import predict_in_fixed_batches

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FLOAT_TYPES = {1: "fp32", 10: "fp16", 11: "fp64", 16: "bf16"}
QUANT_TYPES = {2: "int8", 3: "int8", 6: "int32"}  # uint8, int8, int32 (quantized bias)


def unavailable_reason() -> str | None:
    for module in ("onnx", "onnxruntime", "onnxslim"):
        try:
            __import__(module)
        except ImportError:
            return str(missing_dependency(module, "onnx", "ONNX export"))
    return None


# ---- export ----------------------------------------------------------------------------------


def export_module(module, out: str | Path, opset: int = 17, dynamic_batch: bool = False, batch: int = 1,
                  simplify: bool = True) -> Path:
    """Any torch module taking [N,3,32,32] float pixels -> a checked, slimmed ONNX file.

    Used for edgekit checkpoints and for the quantization stage's fake-quant (QAT) models, whose
    FakeQuantize modules the TorchScript exporter writes as QuantizeLinear/DequantizeLinear pairs.
    """
    import onnx
    import torch

    if opset < 17:
        raise ConfigError(f"opset {opset} is too old for edgekit's exports", "use --opset 17 or newer")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}", "pass --batch 1 or --dynamic-batch")
    out = Path(out)
    module = exportable_fake_quant(module.eval())  # eval: BatchNorm uses running stats and folds into the Conv
    example = torch.rand(1 if dynamic_batch else batch, 3, 32, 32)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with atomic_path(out) as tmp, torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice is not the user's concern
            torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)
        if simplify:
            import onnxslim

            model = onnxslim.slim(model)
            onnx.checker.check_model(model)
        if store_int8_weights(model):
            onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out


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


class _FrozenFakeQuant:
    """Stand-in for a trained FakeQuantize: its learned range as plain fake-quant ops.

    torch's QAT default (FusedMovingAvgObsFakeQuantize) calls an op the TorchScript exporter
    cannot write; fake_quantize_per_{tensor,channel}_affine export as QuantizeLinear +
    DequantizeLinear. ONNX allows only the full 8-bit ranges, so a reduced range (x86's 0..127
    activations, kept there for VPMADDUBSW overflow) is exported as the *same real range* over
    0..255: values beyond the calibrated range clip exactly where torch clips them (that matters
    for percentile/KL/MSE ranges, which clip on purpose), and inside it the grid is twice as fine.
    An explicit Clip between Relu and QuantizeLinear would keep torch's grid but stops ONNX
    Runtime from fusing QLinearConv (all 21 ran float in a check). qnnpack's activations are
    already 0..255 and its weights per tensor: they are written as they are, the ONNX grid is the
    torch model's own (`qdq_grid` records which case a file is).
    """


def qdq_grid(source: Path) -> dict[str, Any] | None:
    """How the QDQ graph of an int8 artifact relates to its torch int8 grid (None: not a static int8 artifact)."""
    from ..config import QuantMode
    from ..qmodel import artifact_engine, artifact_recipe, describe_engine

    recipe = artifact_recipe(source)
    if recipe is None or recipe.get("mode") == QuantMode.dynamic.value:
        return None
    engine = describe_engine(artifact_engine(recipe).value)
    act, weight = engine["activation"], engine["weight"]
    reduced = act["quant_max"] - act["quant_min"] < 255
    return {"engine": engine["engine"], "torch_activation_range": [act["quant_min"], act["quant_max"]],
            "reduce_range": act["reduce_range"], "weights_per_channel": weight["per_channel"],
            "onnx_activation_range": [0, 255] if act["quant_min"] >= 0 else [-128, 127],
            "activation_grid": (f"torch's {act['bits']}-bit range written over ONNX's 8 bits at the same real range: "
                                "the ONNX grid is twice as fine as the torch int8 model's") if reduced else
                               "the torch int8 model's own 8-bit grid, written as it is"}


def manifest_extra(path: Path, source: Path) -> dict[str, Any]:
    grid = qdq_grid(source)
    return {"qdq_from_int8_artifact": grid} if grid else {}


def exportable_fake_quant(module):
    import copy

    import torch
    from torch.ao.quantization import FakeQuantizeBase

    fakes = [name for name, m in module.named_modules() if isinstance(m, FakeQuantizeBase)]
    if not fakes:
        return module
    module = copy.deepcopy(module)

    class Frozen(torch.nn.Module, _FrozenFakeQuant):
        def __init__(self, fq) -> None:
            super().__init__()
            # the buffers the fake-quant last ran with (calculate_qparams would re-derive them from an
            # observer that may never have run)
            scale, zero_point = fq.scale, fq.zero_point
            self.enabled = bool(fq.fake_quant_enabled[0])
            self.per_channel = scale.numel() > 1 or getattr(fq, "is_per_channel", False)
            self.axis = int(getattr(fq, "ch_axis", 0))
            qmin, qmax = int(fq.quant_min), int(fq.quant_max)
            full = (-128, 127) if qmin < 0 else (0, 255)
            stretch = (full[1] - full[0]) / (qmax - qmin)
            scale = scale.detach().double().reshape(-1) / stretch
            zero_point = full[0] + torch.round((zero_point.detach().double().reshape(-1) - qmin) * stretch)
            self.register_buffer("scale", scale.float())
            self.register_buffer("zero_point", zero_point.to(torch.int32))
            self.full = full

        def forward(self, x):
            if not self.enabled:
                return x
            if self.per_channel:
                return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, *self.full)
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale[0]), int(self.zero_point[0]), *self.full)

    for name in fakes:
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, leaf, Frozen(getattr(parent, leaf)))
    return module.eval()


def export(source: Path, out: Path, precision: str, options, calibration=None, reporter: Reporter = quiet) -> Path:
    """Write `source` as ONNX in `precision`; returns `out`.

    An edgekit checkpoint is exported (and for int8, quantized by ONNX Runtime on the calibration
    set); an int8 artifact (static PTQ or QAT) is written as QDQ with its own weights and scales.
    """
    from ..qmodel import is_quantized_artifact
    from . import load_source

    if is_quantized_artifact(source) and precision == "int8":
        reporter.info("onnx: QDQ int8 from the int8 model's own weights and scales")
        return export_qdq_onnx(source, out, options.opset, options.batch, options.dynamic_batch)
    model = load_source(source, precision).build()
    return export_model(model, out, precision, options, calibration, reporter)


def export_qdq_onnx(path: Path, out: Path, opset: int = 17, batch: int = 1, dynamic_batch: bool = False) -> Path:
    """QDQ ONNX of an int8 artifact (static PTQ or QAT) with int8 weight initializers."""
    from ..config import QuantMode
    from ..errors import UnsupportedError
    from ..model import ModelSpec
    from ..qmodel import int8_as_fake_quant, load_quantized

    qmodel, payload = load_quantized(path)
    if payload["recipe"]["mode"] == QuantMode.dynamic.value:
        raise UnsupportedError(f"{Path(path).name} is a dynamic-int8 model (only fc is int8); it has no QDQ graph",
                               "export its fp32 parent, or quantize with --mode static or qat")
    twin = int8_as_fake_quant(qmodel, ModelSpec.from_dict(payload["spec"]), payload["recipe"])
    return export_module(twin, out, opset=opset, dynamic_batch=dynamic_batch, batch=batch)


def export_model(model, out: Path, precision: str, options, calibration=None, reporter: Reporter = quiet) -> Path:
    out = Path(out)
    if precision == "fp32":
        reporter.info(f"onnx: exporting fp32 (opset {options.opset})")
        return export_module(model, out, options.opset, options.dynamic_batch, options.batch)
    if precision not in ("fp16", "int8"):
        raise ConfigError(f"ONNX export has no precision '{precision}'", "choose fp32, fp16 or int8")
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 ONNX export needs a calibration set",
                          "make one with `edgekit calibrate` and pass --calibration FILE")
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as scratch:
        fp32 = export_module(model, Path(scratch) / "fp32.onnx", options.opset, options.dynamic_batch, options.batch)
        if precision == "fp16":
            reporter.info("onnx: converting weights to fp16 (inputs and outputs stay float32)")
            to_fp16(fp32, out)
        else:
            reporter.info(f"onnx: QDQ int8 from {len(calibration.images)} calibration images")
            quantize_qdq(fp32, out, calibration.images, batch=None if options.dynamic_batch else options.batch)
    return out


def to_fp16(src: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _topological_sort(model.graph)  # the converter appends its input Casts after their consumers
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def _topological_sort(graph) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            # the converter broke the graph: a bug to report (with the traceback), not a user error
            raise RuntimeError("ONNX graph has a cycle or a dangling input after fp16 conversion; "
                               "please report it (fp32 export is unaffected)")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def calibration_reader(input_name: str, images: np.ndarray, step: int, drop_last: bool):
    """The one feed of calibration images to onnxruntime.quantization: `step` images per call
    (a file with a static batch takes exactly that many, so a short last batch is dropped)."""
    from onnxruntime.quantization import CalibrationDataReader

    images = np.ascontiguousarray(images, dtype=np.float32)
    stop = len(images) - len(images) % step if drop_last else len(images)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._starts = iter(range(0, stop, step))

        def get_next(self):
            start = next(self._starts, None)
            return None if start is None else {input_name: images[start:start + step]}

        def rewind(self) -> None:  # part of the reader interface in newer ORT
            self._starts = iter(range(0, stop, step))

    return Reader()


def make_baseline(baseline, start: Path, out: Path, calibration) -> Path:
    """onnxruntime.quantization.quantize_static of the fp32 file `start` with its defaults, except
    (variant "uint8") the activation type: what a user would do without edgekit."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_static

    from ..artifacts import Manifest, parent_ref, write_manifest

    graph_input = onnx.load(str(start), load_external_data=False).graph.input[0]
    static = graph_input.type.tensor_type.shape.dim[0].dim_value
    reader = calibration_reader(graph_input.name, calibration.images, static or 32, drop_last=True)
    kwargs = {"activation_type": QuantType.QUInt8} if baseline.variant == "uint8" else {}
    with atomic_path(out) as tmp:
        quantize_static(str(start), str(tmp), reader, **kwargs)
    write_manifest(out, Manifest(
        kind="baseline", format="onnx", precision="int8", parent=parent_ref(start),
        config={"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ (default)",
                "activation_type": "QUInt8" if kwargs else "QInt8 (default)",
                "weight_type": "QInt8 (default)", "per_channel": False, "calibrate_method": "MinMax (default)"},
        extra={"baseline": baseline.label, "calibration": calibration.manifest_ref()}))
    return out


def int8_slowdown_reasons(row: dict[str, Any]) -> list[str]:
    """Why an int8 ONNX file can run slower than its fp32 one, read from its manifest and census."""
    import json

    reasons = []
    activation = json.dumps(row.get("manifest_config") or {}).lower()
    if row.get("runtime") == "onnxruntime" and '"activation_type": "qint8' in activation:
        reasons.append("ONNX Runtime's x86 int8 convolutions are fastest with uint8 activations (u8s8); int8 "
                       "activations take a slower path")
    runtime = (row.get("census") or {}).get("runtime")
    if isinstance(runtime, dict) and "float_conv_gemm" in runtime:
        total = runtime.get("integer_conv_gemm", 0) + runtime["float_conv_gemm"]
        if total and runtime["float_conv_gemm"] / total > 0.2:
            reasons.append(f"{runtime['float_conv_gemm'] / total:.0%} of convolutions/Gemms run in float after "
                           "ONNX Runtime's fusions, so Quantize/Dequantize pairs add work")
    return reasons


def quantize_qdq(src: Path, out: Path, images: np.ndarray, batch: int | None = 1, symmetric_int8: bool = False) -> Path:
    """QDQ int8 over calibration images: per-channel int8 weights, uint8 activations (see module doc).

    `symmetric_int8`: int8 activations with zero point 0, the only QDQ form TensorRT accepts
    (for ONNX Runtime on x86 that form is the slow one, see the module doc).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    images = np.ascontiguousarray(images, dtype=np.float32)
    step = batch or 32
    if batch and len(images) < batch:
        raise ConfigError(f"calibration set has {len(images)} images, fewer than the static batch {batch}",
                          "use a larger calibration set or a smaller --batch")

    with tempfile.TemporaryDirectory(prefix="edgekit-qdq-") as scratch:
        tmp_out = Path(scratch) / "int8.onnx"
        # Conv/Gemm/Add/Mul/pool all quantized; the Normalize Mul+Add gets QDQ too, so the first conv
        # reads uint8 and fuses. MinMax: the calibration set is small and class-balanced, and
        # percentile clipping cost accuracy on the residual adds in a quick check.
        quantize_static(str(src), str(tmp_out), calibration_reader(INPUT_NAME, images, step, drop_last=bool(batch)),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8 if symmetric_int8 else QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        # TensorRT wants float biases (it has no int32 DequantizeLinear); ORT fuses int32 ones.
                        extra_options={"ActivationSymmetric": symmetric_int8, "WeightSymmetric": True,
                                       "QuantizeBias": not symmetric_int8})
        model = onnx.load(str(tmp_out))
        onnx.checker.check_model(model)
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
    return out


# ---- runner ----------------------------------------------------------------------------------


def session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1  # one model, sequential graph: a second pool only contends
    so.log_severity_level = 3
    return so


class OnnxRunner:
    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"ONNX file not found: {path}", "export one with `edgekit export --target onnx`")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise CheckpointError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}",
                                  "re-export the file with `edgekit export --target onnx`") from exc
        self.threads = threads
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        run = lambda chunk: self.session.run(None, {self.input_name: chunk})[0]  # noqa: E731
        return predict_in_fixed_batches(run, batch, self.fixed_batch).astype(np.float32)


def load_runner(path: Path, threads: int | None = None) -> OnnxRunner:
    return OnnxRunner(path, threads)


# ---- census ----------------------------------------------------------------------------------


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


def census(path: Path, runtime: bool = True) -> dict[str, Any]:
    """Weights counted by dtype from the file, and convolutions as ORT actually executes them.

    `weights_by_dtype`: elements of every initializer except Q/DQ scales and zero points (int32
    quantized biases count as int8 arithmetic). `runtime`: the graph after ORT's optimizer, where
    a QDQ Conv either became QLinearConv (integer) or stayed Conv (float); `executed_weights_by_dtype`
    counts conv/gemm weights by how they run (`precision_label(census, executed=True)`).
    """
    import onnx

    model = onnx.load(str(path))
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
        so = session_options(1)
        # EXTENDED: the QDQ -> QLinear* fusions, without the NCHWc layout rewrite that ORT_ENABLE_ALL
        # adds (machine-specific and not serializable as plain ONNX ops).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
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


# ---- debug parity: where does the exported graph first diverge? ------------------------------


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
        session = ort.InferenceSession(str(debug_path), session_options(None), providers=["CPUExecutionProvider"])
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
