"""TensorRT: engines built from edgekit's ONNX, and a CUDA runner.

The engine is built from the same ONNX the onnx target writes (fp32; fp16 weights with float32
I/O; int8 as symmetric QDQ from the shared calibration set). fp16 and int8 are built as
strongly typed networks: the precision comes from the ONNX tensors, not from builder flags
(weak typing is deprecated since TensorRT 10.12), so what the file says is what runs. fp32 is
built with TF32 switched off, so "fp32" means fp32.

An engine only runs on the TensorRT version and GPU (compute capability) that built it. The
manifest records both (`manifest_extra`) and `load_runner` refuses a mismatch with a message
rather than a deserialization crash. The timing cache is kept beside the engine, per GPU and
TensorRT version, so a rebuild skips most tactic timing.

Needs `pip install 'edgekit[tensorrt]'` (tensorrt, cuda-python) and an NVIDIA GPU with its driver.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError, DependencyError, UnsupportedError
from ..report import Reporter, quiet
from . import onnx as onnx_format
from . import predict_in_fixed_batches

WORKSPACE_BYTES = 1 << 30
DYNAMIC_MAX_BATCH = 256
INSTALL_HINT = "pip install 'edgekit[tensorrt]' on a machine with an NVIDIA GPU and its driver"


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = getattr(err, "value", err)
    if code != 0:
        raise DependencyError(f"CUDA call failed: {err}", "check the NVIDIA driver with nvidia-smi")
    return values[0] if len(values) == 1 else tuple(values)


def unavailable_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"the Python package 'tensorrt' is not installed ({INSTALL_HINT})"
    try:
        cudart = _cudart()
    except ImportError:
        return f"the Python package 'cuda-python' is not installed ({INSTALL_HINT})"
    try:
        count = _check(cudart.cudaGetDeviceCount())
    except DependencyError:
        count = 0
    if not count:
        return "no CUDA GPU is visible (TensorRT needs an NVIDIA GPU and the NVIDIA driver; check nvidia-smi)"
    return None


def device_record() -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability: what an engine is bound to."""
    import tensorrt as trt

    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"tensorrt": trt.__version__, "gpu": name.strip("\x00 "),
            "compute_capability": f"{props.major}.{props.minor}"}


def manifest_extra(path: Path) -> dict[str, Any]:
    return {"engine": device_record()}


# ---- ONNX preparation (runs without TensorRT) ---------------------------------------------------


def prepare_onnx(model, out: Path, precision: str, options, calibration=None) -> Path:
    """The ONNX a TensorRT engine is built from: static or dynamic batch, checked by onnx.checker."""
    out = Path(out)
    if precision not in ("fp32", "fp16", "int8"):
        raise UnsupportedError(f"TensorRT export has no precision '{precision}'", "choose fp32, fp16 or int8")
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 TensorRT export needs a calibration set",
                          "make one with `edgekit calibrate` and pass --calibration FILE")
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-onnx-") as scratch:
        fp32 = onnx_format.export_module(model, Path(scratch) / "fp32.onnx", options.opset, options.dynamic_batch,
                                         options.batch)
        if precision == "fp32":
            out.write_bytes(fp32.read_bytes())
        elif precision == "fp16":
            onnx_format.to_fp16(fp32, out)
        else:
            onnx_format.quantize_qdq(fp32, out, calibration.images,
                                     batch=None if options.dynamic_batch else options.batch, symmetric_int8=True)
    return out


# ---- build --------------------------------------------------------------------------------------


def _timing_cache_path(out: Path, record: dict[str, Any]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{record['gpu']}-sm{record['compute_capability']}-trt{record['tensorrt']}")
    return out.parent / f"tensorrt-{slug}.timing-cache"


def export(source: Path, out: Path, precision: str, options, calibration=None, reporter: Reporter = quiet) -> Path:
    from . import load_source

    reason = unavailable_reason()
    if reason:
        raise DependencyError(f"cannot build a TensorRT engine: {reason}", "pip install 'edgekit[tensorrt]'")
    # an int8 artifact gives its dequantized weights; TensorRT wants symmetric int8 activations, so
    # they are calibrated again on the same set rather than copied from torch's uint8 ones
    model = load_source(source, precision).build()
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-") as scratch:
        onnx_path = prepare_onnx(model, Path(scratch) / f"model.{precision}.onnx", precision, options, calibration)
        return build_engine(onnx_path, Path(out), precision, options, reporter)


def build_engine(onnx_path: Path, out: Path, precision: str, options, reporter: Reporter = quiet) -> Path:
    import tensorrt as trt

    from ..artifacts import atomic_path, atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision in ("fp16", "int8"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnsupportedError(f"TensorRT cannot parse the ONNX graph: {errors[:300]}",
                               "export with a newer TensorRT, or report the layer")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then lists each layer's types
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.dynamic_batch:
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        opt = max(1, options.batch)
        profile.set_shape(name, (1, 3, 32, 32), (opt, 3, 32, 32), (DYNAMIC_MAX_BATCH, 3, 32, 32))
        config.add_optimization_profile(profile)
    record = device_record()
    cache_path = _timing_cache_path(out, record)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    reporter.info(f"tensorrt: building {precision} engine on {record['gpu']} (TensorRT {record['tensorrt']})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnsupportedError(f"TensorRT could not build a {precision} engine for this network",
                               "re-run with a TensorRT logger at VERBOSE to see the failing layer")
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
    return out


# ---- runner -------------------------------------------------------------------------------------


def _check_engine_matches(path: Path) -> None:
    """Refuse an engine whose manifest names another TensorRT version or GPU."""
    from ..artifacts import manifest_path, read_manifest

    if not manifest_path(path).exists():
        return  # a freshly built engine being gated, before its manifest exists
    built = read_manifest(path).get("extra", {}).get("engine")
    if not built:
        return
    here = device_record()
    for key in ("tensorrt", "compute_capability", "gpu"):
        if built.get(key) != here.get(key):
            raise CheckpointError(
                f"{path.name} was built for {key} {built.get(key)}, this machine has {here.get(key)}",
                "TensorRT engines are bound to their TensorRT version and GPU: rebuild it here with "
                "`edgekit export --target tensorrt` from the checkpoint")


class TensorRTRunner:
    name = "tensorrt"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise DependencyError(f"cannot run a TensorRT engine: {reason}", "pip install 'edgekit[tensorrt]'")
        import tensorrt as trt

        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"engine not found: {path}", "build one with `edgekit export --target tensorrt`")
        _check_engine_matches(path)
        self.trt = trt
        self.cudart = _cudart()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"TensorRT {trt.__version__} cannot load {path.name}",
                                  "it was built by another TensorRT version or for another GPU: rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.input_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self.cudart.cudaFree(pointer))
            pointer = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, batch.shape)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        output = np.empty(out_shape, dtype=self.output_dtype)
        d_in = self._buffer(self.input_name, batch.nbytes)
        d_out = self._buffer(self.output_name, output.nbytes)
        self.context.set_tensor_address(self.input_name, d_in)
        self.context.set_tensor_address(self.output_name, d_out)
        _check(cudart.cudaMemcpyAsync(d_in, batch.ctypes.data, batch.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise UnsupportedError("TensorRT execution failed", "rebuild the engine; check the GPU with nvidia-smi")
        _check(cudart.cudaMemcpyAsync(output.ctypes.data, d_out, output.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return output.astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return predict_in_fixed_batches(self._run, batch, self.fixed_batch)

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for pointer, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(pointer)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)


def load_runner(path: Path, threads: int | None = None) -> TensorRTRunner:
    return TensorRTRunner(path, threads)


# ---- census -------------------------------------------------------------------------------------

_TYPE_NAMES = {"float": "fp32", "half": "fp16", "int8": "int8", "fp8": "fp8", "int32": "int8", "bf16": "bf16"}


def _dtype_of(text: str) -> str:
    lowered = str(text).lower()
    for key, label in _TYPE_NAMES.items():
        if key in lowered:
            return label
    return lowered or "unknown"


def census(path: Path) -> dict[str, Any]:
    """Layers and their weights by type, from TensorRT's engine inspector (what the engine runs)."""
    runner = TensorRTRunner(path)
    inspector = runner.engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(runner.trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    layers_by_dtype: dict[str, int] = {}
    weights: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        outputs = layer.get("Outputs") or []
        dtype = _dtype_of(outputs[0].get("Format/Datatype", "")) if outputs else "unknown"
        layers_by_dtype[dtype] = layers_by_dtype.get(dtype, 0) + 1
        w = layer.get("Weights")
        if isinstance(w, dict) and w.get("Count"):
            key = _dtype_of(w.get("Type", ""))
            weights[key] = weights.get(key, 0) + int(w["Count"])
    return {"format": "tensorrt", "layers": len(layers), "layers_by_output_dtype": layers_by_dtype,
            "weights_by_dtype": weights, "engine": device_record()}
