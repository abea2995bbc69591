"""TFLite: fp32, fp16 (weights stored as float16) and full-integer int8 files, and their runner.

The file is converted from a Keras twin of the checkpoint's network (see keras_twin.py for why
a twin and not onnx2tf or litert-torch). int8 is full-integer: the converter calibrates on the
shared calibration set (the same images every int8 target sees) and is told to allow int8
builtins only, so a layer it could not quantize fails the export instead of silently staying in
float. `census` reads the flatbuffer itself, so the manifest's precision is what the file holds.

Every exported file carries edgekit's DeployMetadata (metadata.py) in the flatbuffer's own
Model.metadata list: an entry named "edgekit" whose buffer is the JSON, written with LiteRT's
flatbuffer_utils and read back with its schema_py_generated (tflite-support's TFLITE_METADATA
tooling pins protobuf < 4 and cannot be installed beside TensorFlow 2.21; a stock reader skips
metadata entries it does not know).

The runner uses LiteRT (`ai_edge_litert`), the maintained home of the interpreter;
`tf.lite.Interpreter` is deprecated and only the fallback.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_path
from ..errors import CalibrationError, CheckpointError, ConfigError, missing_dependency
from ..report import Reporter, quiet
from ..timing import batch_slices, predict_batched
from .keras_twin import build_twin_from_file, require_tensorflow, runner_input, tensorflow_missing
from .metadata import TFLITE_METADATA_NAME, DeployMetadata, from_json, quantization
from .source import SourceFile, as_source

# Chunk size for big predict() calls: the interpreter allocates every activation for the whole
# batch, and 10,000 CIFAR images at width 1 would need gigabytes.
MAX_INVOKE_BATCH = 256
_FLOAT_TYPES = {"float32", "float16", "float64"}
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}  # float <-> int8 at the file's edges; not compute
_WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def unavailable_reason() -> str | None:
    return tensorflow_missing("TFLite export")


def _require_tensorflow() -> Any:
    return require_tensorflow("TFLite export")


def _check_calibration(calibration: Any, spec: Any) -> np.ndarray:
    if calibration is None:
        raise CalibrationError("an int8 TFLite export needs a calibration set to choose its activation ranges",
                               "pass --calibration calibration/<set>.json (make one with `edgekit calibrate`)")
    images = np.asarray(calibration.images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != tuple(spec.input_shape) or len(images) == 0:
        raise CalibrationError(f"calibration images have shape {images.shape}, expected "
                               f"[N, {', '.join(map(str, spec.input_shape))}]",
                               "re-create the set with `edgekit calibrate`")
    if images.min() < 0.0 or images.max() > 1.0:
        raise CalibrationError("calibration images are not pixels in [0, 1] (the model normalizes inside itself)",
                               "load the set with edgekit.calibrate.load_calibration, which scales them")
    preprocessing = (getattr(calibration, "definition", None) or {}).get("preprocessing") or {}
    if "mean" in preprocessing and tuple(preprocessing["mean"]) != tuple(spec.mean):
        raise CalibrationError(f"calibration set was made for mean {preprocessing['mean']}, the model uses {spec.mean}",
                               "make a calibration set for this model with `edgekit calibrate`")
    return images


def export(source: Path | SourceFile, out: Path, precision: str, options: Any, calibration: Any = None,
           reporter: Reporter = quiet) -> Path:
    """Write `out` (.tflite) from the edgekit checkpoint `source` (a path or the SourceFile an
    export has read) at `precision`; return `out`.

    An int8 artifact as `source` (int8 only) gives its dequantized weights to the converter,
    which calibrates activations on the same calibration set."""
    from . import export_format

    export_format("tflite", precision)
    if precision != "int8" and getattr(options, "int8_io", False):
        raise ConfigError("--int8-io needs --precision int8", "drop --int8-io or export int8")
    out = Path(out)
    tf = _require_tensorflow()
    batch = None if options.dynamic_batch else int(options.batch)
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", "pass --batch 1 or --dynamic-batch")
    source = as_source(source)
    checkpoint, model = build_twin_from_file(source, batch, precision)
    images = _check_calibration(calibration, checkpoint.spec) if precision == "int8" else None

    converter = _converter(tf, model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if options.int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        # A static-batch file takes exactly its batch per step (wrapping round the set to fill
        # the last one); a dynamic one takes one image at a time.
        step = batch or 1
        order = np.arange(-(-len(nhwc) // step) * step) % len(nhwc)

        def representative() -> Any:
            with reporter.progress("tflite int8 calibration", total=len(nhwc)) as bar:
                for rows in batch_slices(len(order), step):
                    yield [nhwc[order[rows]]]
                    bar.advance(max(0, min(rows.stop, len(nhwc)) - rows.start))

        converter.representative_dataset = representative
    reporter.info(f"tflite: converting {source.name} to {precision}")
    # The int8 converter warns that the float input has no range statistics: expected, the
    # QUANTIZE op at the input carries the calibrated range.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        content = converter.convert()
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    return out


def _converter(tf: Any, model: Any) -> Any:
    """The one converter set-up: from the frozen concrete function of the Keras twin."""
    from .keras_twin import concrete_function

    return tf.lite.TFLiteConverter.from_concrete_functions([concrete_function(model)], model)


def make_baseline(baseline: Any, start: Path, out: Path, calibration: Any) -> Path:
    """The TFLite converter's documented full-integer recipe from the root checkpoint `start`:
    Optimize.DEFAULT + a representative dataset, nothing else (float I/O, float fallback allowed)."""
    from ..artifacts import Manifest, parent_ref, write_manifest
    from ..model import load_checkpoint
    from .keras_twin import build_twin, nchw_to_nhwc

    tf = _require_tensorflow()
    converter = _converter(tf, build_twin(load_checkpoint(start)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    images = nchw_to_nhwc(calibration.images)
    converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
    content = converter.convert()
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    write_manifest(out, Manifest(
        kind="baseline", format="tflite", precision="int8", parent=parent_ref(start),
        config={"tool": "tf.lite.TFLiteConverter", "optimizations": ["DEFAULT"],
                "representative_dataset": "calibration images, one per step", "io": "float32 (default)"},
        extra={"baseline": baseline.label, "calibration": calibration.manifest_ref()}))
    return out


def int8_slowdown_reasons(runtime: str, manifest_config: dict[str, Any] | None,
                          census: dict[str, Any] | None) -> list[str]:
    """Why an int8 TFLite file can run slower than its fp32 one: ops left in float, from its census."""
    census = census or {}
    ops, float_ops = census.get("ops_by_type"), census.get("float_ops")
    if not isinstance(ops, dict) or not isinstance(float_ops, dict):
        return []
    total = sum(v for k, v in ops.items() if k not in ("QUANTIZE", "DEQUANTIZE"))
    share = sum(float_ops.values()) / total if total else 0.0
    if share <= 0.2:
        return []
    return [f"{share:.0%} of compute ops stay in float, so Quantize/Dequantize pairs add work"]


# ---- runner ----------------------------------------------------------------------------------


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        if importlib.util.find_spec("tensorflow") is None:
            raise missing_dependency("ai-edge-litert", "tflite", "running a .tflite file") from None
        from .keras_twin import import_tensorflow

        Interpreter = import_tensorflow().lite.Interpreter
    return Interpreter


class TFLiteRunner:
    """Float NCHW pixels in, float logits out, whatever layout and dtype the file uses inside."""

    name = "tflite"

    def __init__(self, path: Path, threads: int | None = None, max_batch: int = MAX_INVOKE_BATCH) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"TFLite file not found: {path}", "export one with `edgekit export --target tflite`")
        interpreter_class = _interpreter_class()
        try:
            self.interpreter = interpreter_class(model_path=str(path), num_threads=threads)
        except ValueError as exc:
            raise CheckpointError(f"cannot load {path}: {exc}", "the file is damaged; export it again") from exc
        self.threads = threads
        self.max_batch = max_batch
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            # strict=False: a file exported with a static batch can still be resized; TFLite
            # re-plans its buffers at allocate_tensors().
            self.interpreter.resize_tensor_input(self._input["index"], [n, *self._input["shape"][1:]], strict=False)
            self.interpreter.allocate_tensors()
            self._batch = n
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype.kind == "f":
            return x.astype(self.input_dtype, copy=False)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(self.input_dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype.kind == "f":
            return y.astype(np.float32)
        scale, zero_point = self._output["quantization"]
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        nhwc = runner_input(batch, self._input["shape"])
        if not len(nhwc):
            return np.zeros((0, int(self._output["shape"][-1])), dtype=np.float32)
        return predict_batched(self._run, nhwc, self.max_batch)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        self._resize(len(chunk))
        self.interpreter.set_tensor(self._input["index"], self._quantize(chunk))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self._output["index"]))


def load_runner(path: Path, threads: int | None = None) -> TFLiteRunner:
    return TFLiteRunner(path, threads)


# ---- metadata: what the file says about itself ------------------------------------------------


def _flatbuffer_utils() -> Any:
    try:
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:
        if importlib.util.find_spec("tensorflow") is None:
            raise missing_dependency("ai-edge-litert", "tflite", "writing TFLite metadata") from None
        from tensorflow.lite.tools import flatbuffer_utils
    return flatbuffer_utils


def write_metadata(path: Path, meta: DeployMetadata) -> DeployMetadata:
    """Complete `meta` from the file's input/output tensors (shape, dtype, int8 quantization), store
    it as the Model.metadata entry "edgekit" (replacing an earlier one); returns it."""
    path = Path(path)
    schema, utils = _schema(), _flatbuffer_utils()
    model = utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    graph = model.subgraphs[0]
    type_names = {k: v.lower() for k, v in _enum_names(schema.TensorType).items()}

    def describe(index: int) -> tuple[str, list[int | None], str, dict | None]:
        tensor = graph.tensors[index]
        signature = tensor.shapeSignature  # -1 where the batch is dynamic; absent when static
        dims = list(signature) if signature is not None and len(signature) else list(tensor.shape)
        shape = [None if d < 0 else int(d) for d in dims]
        dtype = type_names.get(tensor.type, str(tensor.type))
        q = tensor.quantization
        quant = None
        if dtype in ("int8", "uint8", "int16") and q is not None and q.scale is not None and len(q.scale):
            quant = quantization(q.scale[0], q.zeroPoint[0])
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        return name, shape, dtype, quant

    in_name, in_shape, in_dtype, in_quant = describe(graph.inputs[0])
    out_name, _, out_dtype, out_quant = describe(graph.outputs[0])
    meta = meta.with_io(input_name=in_name, input_layout="NHWC", input_shape=in_shape, input_dtype=in_dtype,
                        input_quantization=in_quant, output_name=out_name, output_dtype=out_dtype,
                        output_quantization=out_quant)
    entries = [m for m in (model.metadata or []) if _text(m.name) != TFLITE_METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta.to_json().encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = entries + [entry]
    content = utils.convert_object_to_bytearray(model)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(content))
    return meta


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(path: Path) -> DeployMetadata | None:
    """The "edgekit" Model.metadata entry of a .tflite file, or None when it has none."""
    buffer = Path(path).read_bytes()
    model = _schema().Model.GetRootAs(buffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _text(entry.Name()) == TFLITE_METADATA_NAME:
            return from_json(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes(), str(path))
    return None


# ---- census: read the flatbuffer ---------------------------------------------------------------


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        if importlib.util.find_spec("tensorflow") is None:
            raise missing_dependency("ai-edge-litert", "tflite", "reading a .tflite file") from None
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _enum_names(enum_class: Any) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_") and isinstance(value, int)}


def census(path: Path) -> dict:
    """Tensors, weights and ops of a .tflite file, counted by dtype and type from the flatbuffer.

    weights_by_dtype: elements of constant tensors per dtype (int32 biases appear in int8 files);
    weighted_op_weights_by_dtype: the stored dtype of conv/fc kernels (fp16 kernels are stored
    float16 and dequantized at load, so this looks through DEQUANTIZE);
    float_ops: ops, other than the QUANTIZE/DEQUANTIZE at the edges, that compute in float;
    precision: what the file holds (fp32, fp16, int8, or mixed).
    """
    path = Path(path)
    schema = _schema()
    buffer = path.read_bytes()
    try:
        model = schema.Model.GetRootAs(buffer, 0)
        if not schema.Model.ModelBufferHasIdentifier(buffer, 0):
            raise ValueError("no TFL3 identifier")
    except Exception as exc:
        raise CheckpointError(f"{path} is not a TFLite flatbuffer ({exc})", "export it again") from exc
    type_names = {k: v.lower() for k, v in _enum_names(schema.TensorType).items()}
    op_names = _enum_names(schema.BuiltinOperator)
    opcodes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM" and code.CustomCode():
            name = f"CUSTOM:{code.CustomCode().decode()}"
        opcodes.append(name)

    def is_constant(tensor: Any) -> bool:
        index = tensor.Buffer()
        if index <= 0 or index >= model.BuffersLength():
            return False
        data = model.Buffers(index)
        return data.DataLength() > 0 or data.Offset() > 1

    weights: dict[str, int] = {}
    weight_tensors: dict[str, int] = {}
    activations: dict[str, int] = {}
    ops: dict[str, int] = {}
    float_ops: dict[str, int] = {}
    kernels: dict[str, int] = {}
    io_dtypes: dict[str, list[str]] = {"inputs": [], "outputs": []}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]
        dtypes = [type_names.get(t.Type(), str(t.Type())) for t in tensors]
        constant = [is_constant(t) for t in tensors]
        producer: dict[int, str] = {}
        op_inputs: dict[int, list[int]] = {}
        for i, tensor in enumerate(tensors):
            elements = int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else 1
            if constant[i]:
                weights[dtypes[i]] = weights.get(dtypes[i], 0) + elements
                weight_tensors[dtypes[i]] = weight_tensors.get(dtypes[i], 0) + 1
            else:
                activations[dtypes[i]] = activations.get(dtypes[i], 0) + 1
        operators = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        for op in operators:
            name = opcodes[op.OpcodeIndex()]
            inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            for o in (op.OutputsAsNumpy() if op.OutputsLength() else []):
                producer[int(o)] = name
                op_inputs[int(o)] = inputs
        for op in operators:
            name = opcodes[op.OpcodeIndex()]
            ops[name] = ops.get(name, 0) + 1
            inputs = [int(i) for i in op.InputsAsNumpy() if i >= 0] if op.InputsLength() else []
            outputs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
            if name not in _BOUNDARY_OPS and any(dtypes[i] in _FLOAT_TYPES for i in inputs + outputs):
                float_ops[name] = float_ops.get(name, 0) + 1
            if name in _WEIGHTED_OPS and len(inputs) > 1:
                kernel = inputs[1]
                if not constant[kernel] and producer.get(kernel) == "DEQUANTIZE":
                    kernel = op_inputs[kernel][0]
                kernels[dtypes[kernel]] = kernels.get(dtypes[kernel], 0) + 1
        if s == 0:
            io_dtypes["inputs"] = [dtypes[int(i)] for i in graph.InputsAsNumpy()]
            io_dtypes["outputs"] = [dtypes[int(i)] for i in graph.OutputsAsNumpy()]
    return {
        "weights_by_dtype": weights,
        "weight_tensors_by_dtype": weight_tensors,
        "activation_tensors_by_dtype": activations,
        "weighted_op_weights_by_dtype": kernels,
        "ops_by_type": ops,
        "float_ops": float_ops,
        "io_dtypes": io_dtypes,
        "precision": _precision(kernels, float_ops),
    }


def _precision(kernels: dict[str, int], float_ops: dict[str, int]) -> str:
    if set(kernels) == {"int8"}:
        return "int8" if not float_ops else "mixed"
    if set(kernels) == {"float16"}:
        return "fp16"
    if set(kernels) == {"float32"}:
        return "fp32"
    return "mixed"
