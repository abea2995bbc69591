"""ONNX: export (fp32, fp16, QDQ int8) and an ONNX Runtime runner.

fp32 comes from the legacy TorchScript exporter in eval mode, so BatchNorm folds into Conv at
export, then onnxslim tidies the graph. fp16 converts the weights and keeps float32 inputs and
outputs (the runner contract stays float32). int8 is QDQ from `quantize_static` over the shared
calibration set: per-channel int8 weights on 7 bits (onnx_int8.py: exact on CPUs without VNNI too), uint8
activations.

Why uint8 activations, measured here (benchmarks/onnx_int8_probe.py): the file of a QDQ model
says "int8" for every Conv either way, but what runs is decided later by ORT's graph optimizer,
which fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv. With int8 (S8S8)
activations ORT 1.32 on x86 fused only the 8 convs fed by a block's inner ReLU; the 12 convs
fed by a residual output or the normalized input (stem, conv1 of every block, downsample) ran
as DQ -> float Conv -> Q, slower than plain fp32. That is the "12 of 20 convolutions stayed
float" seen on the pruned model; it is the same 12 on the unpruned one. With uint8 activations
(U8S8) all 20 fuse. Optimizing the fp32 graph with ORT before quantizing is the other trap:
its Conv+ReLU fusion makes FusedConv nodes that `quantize_static` does not know, so 9 convs stay
float. So the census (onnx_census.py) counts both what the file holds and what ORT actually executes.

Every exported file carries edgekit's DeployMetadata in its metadata_props (`write_metadata`).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_path
from ..config import ONNX_OPSET
from ..errors import CheckpointError, ConfigError, missing_dependency
from ..report import Reporter, quiet
from ..timing import batch_slices, predict_batched
from .metadata import DeployMetadata, from_props
from .source import SourceFile, as_source
# The format's census and --debug-parity, each in its own module (this one exports and runs):
from .onnx_census import census, load_file, runtime_census  # noqa: F401
from .onnx_debug import debug_divergence  # noqa: F401
# Why the float-checkpoint path writes 7-bit weights, and the check of it from a file's codes;
# how a fake-quant model's QDQ graph comes to hold int8 weights and int32 biases:
from .onnx_int8 import (INT16_MAX, WEIGHT_RANGE_KEY, store_int8_weights, store_int32_biases,  # noqa: F401
                        u8s8_pair_bound, weight_record)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def unavailable_reason() -> str | None:
    for module in ("onnx", "onnxruntime", "onnxslim"):
        try:
            __import__(module)
        except ImportError:
            return str(missing_dependency(module, "onnx", "ONNX export"))
    return None


# ---- export ----------------------------------------------------------------------------------


def export_module(module, out: str | Path, opset: int = ONNX_OPSET, dynamic_batch: bool = False, batch: int = 1,
                  simplify: bool = True, input_shape: tuple[int, ...] | None = None) -> Path:
    """Any torch module taking [N, C, H, W] float pixels -> a checked, slimmed ONNX file (the image
    shape `input_shape` (C, H, W), else from the module's ModelSpec, as every edgekit model and
    fake-quant twin carries one).

    Used for edgekit checkpoints and for the quantization stage's fake-quant (QAT) models, whose
    FakeQuantize modules the TorchScript exporter writes as QuantizeLinear/DequantizeLinear pairs.
    """
    import onnx
    import torch

    from ..model import ModelSpec

    if opset < ONNX_OPSET:
        raise ConfigError(f"opset {opset} is too old for edgekit's exports", f"use --opset {ONNX_OPSET} or newer")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}", "pass --batch 1 or --dynamic-batch")
    out = Path(out)
    image = tuple(input_shape) if input_shape is not None else getattr(module, "spec", ModelSpec()).input_shape
    module = exportable_fake_quant(module.eval())  # eval: BatchNorm uses running stats and folds into the Conv
    example = torch.rand(1 if dynamic_batch else batch, *image)
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
            store_int32_biases(model)
            onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out


class _FrozenFakeQuant:
    """Stand-in for a trained FakeQuantize: its learned range as plain fake-quant ops.

    torch's QAT default (FusedMovingAvgObsFakeQuantize) calls an op the TorchScript exporter
    cannot write; fake_quantize_per_{tensor,channel}_affine export as QuantizeLinear +
    DequantizeLinear. ONNX allows only the full 8-bit ranges, so x86's reduced activation range
    (0..127, kept for VPMADDUBSW overflow on CPUs without VNNI) is written with torch's own scale
    and zero point over 0..255: inside the calibrated range the ONNX grid is torch's grid, code
    for code, and ONNX Runtime's u8 x s8 kernels on a CPU without VNNI see the same 7-bit codes
    torch's do; only values beyond the range, which torch clips at code 127, pass up to 255.
    Stretching the same real range over 0..255 instead (a twice finer grid, torch's clip kept)
    was the earlier choice: its codes above 127 saturate those kernels, and on an AVX2-only EPYC
    the width-0.5 reference's static int8 file scored 79.22 % in ONNX Runtime that way, 84.30 % this
    way, against the torch int8 model's 84.28 % (benchmarks/results/qdq-grid-probe.md). An explicit Clip between Relu and QuantizeLinear would
    keep torch's clip but stops ONNX
    Runtime from fusing QLinearConv (all 21 ran float in a check). qnnpack's activations are
    already 0..255 and its weights per tensor: they are written as they are, the ONNX grid is the
    torch model's own (`qdq_grid` records which case a file is).
    """


def qdq_grid(source: Path | SourceFile) -> dict[str, Any] | None:
    """How the QDQ graph of an int8 artifact relates to its torch int8 grid (None: not a static int8 artifact)."""
    from ..qengine import artifact_engine, artifact_per_channel, describe_engine
    from ..qmodel import is_dynamic

    recipe = as_source(source).recipe
    if recipe is None or is_dynamic(recipe):
        return None
    engine = describe_engine(artifact_engine(recipe).value, artifact_per_channel(recipe))
    act, weight = engine["activation"], engine["weight"]
    reduced = act["quant_max"] - act["quant_min"] < 255
    return {"engine": engine["engine"], "torch_activation_range": [act["quant_min"], act["quant_max"]],
            "reduce_range": act["reduce_range"], "weights_per_channel": weight["per_channel"],
            "onnx_activation_range": [0, 255] if act["quant_min"] >= 0 else [-128, 127],
            "activation_grid": (f"torch's {act['bits']}-bit grid (scale, zero point) written as it is over ONNX's "
                                "8 bits: the same codes inside the range, no clip at its top") if reduced else
                               "the torch int8 model's own 8-bit grid, written as it is"}


def manifest_extra(path: Path, source: Path | SourceFile) -> dict[str, Any]:
    grid = qdq_grid(source)
    extra: dict[str, Any] = {"qdq_from_int8_artifact": grid} if grid else {}
    if Path(path).suffix == ".onnx" and Path(path).is_file():
        props = {p.key: p.value for p in load_file(path, load_external_data=False).metadata_props}
        if WEIGHT_RANGE_KEY in props:
            extra["int8_weights"] = json.loads(props[WEIGHT_RANGE_KEY])
    return extra


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
            full = (-128, 127) if int(fq.quant_min) < 0 else (0, 255)
            # torch's grid as it is: a reduced range keeps its scale and zero point (see the class doc)
            scale = scale.detach().double().reshape(-1)
            zero_point = zero_point.detach().double().reshape(-1)
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


def export(source: Path | SourceFile, out: Path, precision: str, options, calibration=None,
           reporter: Reporter = quiet) -> Path:
    """Write `source` as ONNX in `precision`; returns `out`.

    An edgekit checkpoint is exported (and for int8, quantized by ONNX Runtime on the calibration
    set); an int8 artifact (static PTQ or QAT) is written as QDQ with its own weights and scales.
    """
    source = as_source(source)
    if source.is_int8 and precision == "int8":
        reporter.info("onnx: QDQ int8 from the int8 model's own weights and scales")
        return export_qdq_onnx(source, out, options.opset, options.batch, options.dynamic_batch)
    model = source.checkpoint(precision).build()
    return export_model(model, out, precision, options, calibration, reporter)


def export_qdq_onnx(path: Path | SourceFile, out: Path, opset: int = ONNX_OPSET, batch: int = 1,
                    dynamic_batch: bool = False) -> Path:
    """QDQ ONNX of an int8 artifact (static PTQ or QAT) with int8 weight initializers."""
    from ..model import ModelSpec
    from ..qmodel import int8_as_fake_quant, refuse_dynamic

    source = as_source(path)
    qmodel, payload = source.quantized
    refuse_dynamic(source.path, payload["recipe"])
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

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self):
            rows = next(self._slices, None)
            return None if rows is None else {input_name: images[rows]}

        def rewind(self) -> None:  # part of the reader interface in newer ORT
            self._slices = batch_slices(len(images), step, drop_last)

    return Reader()


def make_baseline(baseline, start: Path, out: Path, calibration) -> Path:
    """onnxruntime.quantization.quantize_static of the fp32 file `start` with its defaults, except
    (variant "uint8") the activation type and, as edgekit's own files, reduce_range (7-bit
    weights, ORT's documented setting for CPUs without VNNI): what a user would do without edgekit."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_static

    from ..artifacts import Manifest, parent_ref, write_manifest

    graph_input = onnx.load(str(start), load_external_data=False).graph.input[0]
    static = graph_input.type.tensor_type.shape.dim[0].dim_value
    reader = calibration_reader(graph_input.name, calibration.images, static or 32, drop_last=True)
    kwargs = {"activation_type": QuantType.QUInt8} if baseline.variant == "uint8" else {}
    with atomic_path(out) as tmp:
        quantize_static(str(start), str(tmp), reader, reduce_range=True, **kwargs)
    write_manifest(out, Manifest(
        kind="baseline", format="onnx", precision="int8", parent=parent_ref(start),
        config={"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ (default)",
                "activation_type": "QUInt8" if kwargs else "QInt8 (default)",
                "weight_type": "QInt8 (default)", "per_channel": False, "calibrate_method": "MinMax (default)",
                "reduce_range": True},
        extra={"baseline": baseline.label, "calibration": calibration.manifest_ref()}))
    return out


def int8_slowdown_reasons(runtime: str, manifest_config: dict[str, Any] | None,
                          census: dict[str, Any] | None) -> list[str]:
    """Why an int8 ONNX file can run slower than its fp32 one, read from its manifest and census."""
    import json

    reasons = []
    activation = json.dumps(manifest_config or {}).lower()
    if runtime == "onnxruntime" and '"activation_type": "qint8' in activation:
        reasons.append("ONNX Runtime's x86 int8 convolutions are fastest with uint8 activations (u8s8); int8 "
                       "activations take a slower path")
    executed = (census or {}).get("runtime")
    if isinstance(executed, dict) and "float_conv_gemm" in executed:
        total = executed.get("integer_conv_gemm", 0) + executed["float_conv_gemm"]
        if total and executed["float_conv_gemm"] / total > 0.2:
            reasons.append(f"{executed['float_conv_gemm'] / total:.0%} of convolutions/Gemms run in float after "
                           "ONNX Runtime's fusions, so Quantize/Dequantize pairs add work")
    return reasons


def quantize_qdq(src: Path, out: Path, images: np.ndarray, batch: int | None = 1, symmetric_int8: bool = False,
                 weight_bits: int = 7) -> Path:
    """QDQ int8 over calibration images: per-channel int8 weights on 7 bits, uint8 activations (see module doc).

    `symmetric_int8`: int8 activations with zero point 0, the only QDQ form TensorRT accepts
    (for ONNX Runtime on x86 that form is the slow one, see the module doc). Without it, the
    weights take 7 bits (reduce_range: see INT16_MAX) and the file records so in its metadata.

    `weight_bits=8`: full 8-bit weights, only to measure what 7 bits avoid
    (benchmarks/weight_bits_probe.py): such a file is not computed exactly on x86 CPUs without
    VNNI, so it carries no weight record and nothing in edgekit writes one for a user.
    """
    if weight_bits not in (7, 8):
        raise ConfigError(f"int8 ONNX weights take 7 or 8 bits, not {weight_bits}", "use 7 (any CPU) or 8")
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
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=weight_bits == 7 and not symmetric_int8,
                        # TensorRT wants float biases (it has no int32 DequantizeLinear); ORT fuses int32 ones.
                        extra_options={"ActivationSymmetric": symmetric_int8, "WeightSymmetric": True,
                                       "QuantizeBias": not symmetric_int8})
        model = onnx.load(str(tmp_out))
        onnx.checker.check_model(model)
        if not symmetric_int8 and weight_bits == 7:
            bound = u8s8_pair_bound(model)
            if not bound["fits_int16"]:  # a bug in the recipe, not a user error: keep the traceback
                raise RuntimeError(f"int8 ONNX weights reach a u8 x s8 pair sum of {bound['max_pair_sum']} > {INT16_MAX}")
            model.metadata_props.add(key=WEIGHT_RANGE_KEY, value=json.dumps(weight_record(bound)))
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
    return out


# ---- metadata: what the file says about itself (edgekit/formats/metadata.py) -----------------


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def write_metadata(path: Path, meta: DeployMetadata) -> DeployMetadata:
    """Complete `meta` from the graph's input and output, store it in metadata_props; returns it."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path))
    inp, out = model.graph.input[0], model.graph.output[0]

    def dtype(value_info) -> str:
        elem = value_info.type.tensor_type.elem_type
        return "float32" if elem == TensorProto.FLOAT else TensorProto.DataType.Name(elem).lower()

    meta = meta.with_io(input_name=inp.name, input_layout="NCHW", input_shape=_dims(inp), input_dtype=dtype(inp),
                        output_name=out.name, output_dtype=dtype(out))
    props = meta.to_props()
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return meta


def read_metadata(path: Path) -> DeployMetadata | None:
    model = load_file(path, load_external_data=False)
    return from_props({p.key: p.value for p in model.metadata_props}, str(path))


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
        if self.fixed_batch is None:  # a batch axis of any size takes the whole batch at once
            return run(batch).astype(np.float32)
        return predict_batched(run, batch, self.fixed_batch, pad=True)


def load_runner(path: Path, threads: int | None = None) -> OnnxRunner:
    return OnnxRunner(path, threads)


def check_file(path: Path) -> None:
    """The graph parses (external weights not read): a damaged file is named before any data is decoded."""
    from .onnx_census import load_file

    load_file(path, load_external_data=False)
