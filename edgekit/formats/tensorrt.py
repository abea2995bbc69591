"""TensorRT: engines built from edgekit's ONNX, and a CUDA runner.

The engine is built from the same ONNX the onnx target writes (fp32; fp16 weights with float32
I/O; int8 as symmetric Q/DQ placed the way TensorRT fuses it, see tensorrt_qdq.py). Every
precision is built as a strongly typed network: the precision comes from the ONNX tensors, not
from builder flags (weak typing is deprecated since TensorRT 10.12), so what the file says is
what runs. fp32 is built with TF32 switched off, so "fp32" means fp32.

An engine only runs on the TensorRT version and GPU (compute capability) that built it. The
manifest records both (`manifest_extra`) and `load_runner` refuses a mismatch with a message
rather than a deserialization crash. The timing cache is kept beside the engine, per GPU and
TensorRT version, so a rebuild skips most tactic timing.

An engine has no field for user metadata, so edgekit's DeployMetadata (metadata.py) travels in
the manifest beside it (`extra.metadata`, as in every export's manifest); examples/run_tensorrt.py
reads it from there.

Install: `edgekit[tensorrt-cu12]` (CUDA 12 builds, NVIDIA driver 525 or newer) or
`edgekit[tensorrt-cu13]` (CUDA 13 builds, driver 580 or newer); `edgekit[tensorrt]` is the
CUDA 12 one. On Jetson, TensorRT comes with JetPack as a system package (see the README).
"""

from __future__ import annotations

import ctypes
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError, DependencyError, UnsupportedError
from ..report import Reporter, quiet
from . import onnx as onnx_format
from .source import SourceFile, as_source
from ..timing import predict_batched

WORKSPACE_BYTES = 1 << 30
DYNAMIC_MAX_BATCH = 256  # the parity gate's batch: it runs in one call
# The batch TensorRT tunes a dynamic engine's tactics for: the bench sweep's largest batch (its
# other batches run on the same tactics; for batch-1 latency, export with a static --batch 1).
DYNAMIC_OPT_BATCH = 128
INSTALL_HINT = ("pip install 'edgekit[tensorrt-cu12]' (NVIDIA driver 525+) or 'edgekit[tensorrt-cu13]' "
                "(driver 580+) on a machine with an NVIDIA GPU; on Jetson use JetPack's TensorRT")
_INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver
_NO_DEVICE = 100  # cudaErrorNoDevice


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 (the only layout in 13)
    except ImportError:
        from cuda import cudart  # older cuda-python 12
    return cudart


def _code(err) -> int:
    return int(getattr(err, "value", err))


def _check(result, what: str = "CUDA call"):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if _code(err) != 0:
        name = getattr(err, "name", str(err))
        raise DependencyError(f"{what} failed: {name}", "check the GPU and its driver with nvidia-smi")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_version_text(version: int) -> str:
    """CUDA's integer versions (12040) as text (12.4)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def insufficient_driver_message(driver_version: int, runtime_version: int) -> str:
    """The driver cannot run this CUDA runtime: say which is which, and the ways out."""
    driver = f"CUDA {cuda_version_text(driver_version)}" if driver_version else "no CUDA version"
    fix = "update the NVIDIA driver"
    if runtime_version >= 13000:  # CUDA 13 wheels need driver 580+; the CUDA 12 ones run on 525+
        fix += ", or install the CUDA 12 build: pip install 'edgekit[tensorrt-cu12]'"
    return (f"the NVIDIA driver is older than this CUDA runtime (cudaGetDeviceCount: insufficient driver; "
            f"the driver supports {driver}, cuda-python/TensorRT here are built for CUDA "
            f"{cuda_version_text(runtime_version)}): {fix} (nvidia-smi shows the driver's CUDA version)")


def unavailable_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"the Python package 'tensorrt' is not installed ({INSTALL_HINT})"
    try:
        cudart = _cudart()
    except ImportError:
        return f"the Python package 'cuda-python' is not installed ({INSTALL_HINT})"
    err, count = cudart.cudaGetDeviceCount()
    if _code(err) == _INSUFFICIENT_DRIVER:
        driver_err, driver = cudart.cudaDriverGetVersion()
        _, runtime = cudart.cudaRuntimeGetVersion()
        return insufficient_driver_message(driver if _code(driver_err) == 0 else 0, runtime)
    if _code(err) not in (0, _NO_DEVICE):
        return (f"CUDA cannot list the GPUs ({getattr(err, 'name', err)}); check the NVIDIA driver "
                "with nvidia-smi")
    if _code(err) == _NO_DEVICE or not count:
        return "no CUDA GPU is visible (TensorRT needs an NVIDIA GPU and the NVIDIA driver; check nvidia-smi)"
    return None


def device_record() -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability: what an engine is bound to."""
    import tensorrt as trt

    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"tensorrt": trt.__version__, "gpu": name.strip("\x00 "),
            "compute_capability": f"{props.major}.{props.minor}"}


def manifest_extra(path: Path, source: Path | SourceFile) -> dict[str, Any]:
    return {"engine": device_record()}


def write_metadata(path: Path, meta):
    """Complete `meta` from the engine's I/O tensors; the export stage writes it into the manifest."""
    runner = TensorRTRunner(path)
    engine = runner.engine
    shape = [int(d) for d in engine.get_tensor_shape(runner.input_name)]
    return meta.with_io(input_name=runner.input_name, input_layout="NCHW",
                        input_shape=[None if d < 0 else d for d in shape],
                        input_dtype=np.dtype(runner.input_dtype).name, output_name=runner.output_name,
                        output_dtype=np.dtype(runner.output_dtype).name)


def read_metadata(path: Path):
    """From the manifest beside the engine (an engine file has no room for it), or None."""
    from ..artifacts import manifest_path, read_manifest
    from .metadata import from_dict

    if not manifest_path(path).exists():
        return None
    recorded = read_manifest(path).get("extra", {}).get("metadata")
    return from_dict(recorded, str(manifest_path(path))) if recorded else None


# ---- ONNX preparation (runs without TensorRT) ---------------------------------------------------


def prepare_onnx(model, out: Path, precision: str, options, calibration=None) -> Path:
    """The ONNX a TensorRT engine is built from a float model: static or dynamic batch, checked by onnx.checker.

    int8: ONNX Runtime's MinMax calibration on the calibration set, Q/DQ placed for TensorRT.
    """
    from . import tensorrt_qdq

    out = Path(out)
    from . import export_format

    export_format("tensorrt", precision)
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
            tensorrt_qdq.calibrated_qdq(fp32, out, calibration.images,
                                        batch=None if options.dynamic_batch else options.batch)
    return out


def prepare_int8_artifact_onnx(source: Path | SourceFile, out: Path, options) -> Path:
    """The ONNX for an int8 artifact (static PTQ or QAT): its own int8 weights and activation ranges
    (made symmetric), Q/DQ placed for TensorRT; nothing is calibrated again. Per-channel weights
    only (what the placement checks and TensorRT's int8 convs are tuned for): an artifact with
    per-tensor weights (the ARM engine's default, or `--weights per-tensor`) is refused, naming
    what to build from. The recipe's weight scheme decides, not the engine alone."""
    from ..qengine import artifact_engine, artifact_per_channel, describe_engine
    from ..qmodel import is_dynamic
    from . import QDQ_SUFFIX
    from .onnx import export_qdq_onnx
    from . import tensorrt_qdq

    source = as_source(source)
    recipe = source.recipe or {}
    per_channel = artifact_per_channel(recipe)
    engine = describe_engine(artifact_engine(recipe).value, per_channel)
    if not is_dynamic(recipe) and not per_channel:
        raise UnsupportedError(f"{source.name} is an int8 model for the {engine['engine']} engine "
                               f"({engine['kernels_for']} CPUs) with per-tensor weights; edgekit's TensorRT int8 "
                               "path takes per-channel weights", "build the engine from its float parent (named in "
                               "its manifest), or from `edgekit quantize --backend x86 --weights per-channel`")

    with tempfile.TemporaryDirectory(prefix="edgekit-trt-onnx-") as scratch:
        qdq = export_qdq_onnx(source, Path(scratch) / f"artifact{QDQ_SUFFIX}", options.opset, options.batch,
                              options.dynamic_batch)
        act = engine["activation"]  # the codes the torch model's activations span (x86: 0..127)
        return tensorrt_qdq.place_file(qdq, Path(out), (act["quant_min"], act["quant_max"]))


def prepare_source_onnx(source: Path | SourceFile, out: Path, precision: str, options, calibration=None,
                        reporter: Reporter = quiet) -> Path:
    """What `export` hands to TensorRT's ONNX parser, for any edgekit source (runs without TensorRT)."""
    source = as_source(source)
    if precision == "int8" and source.is_int8:
        reporter.info("tensorrt: int8 from the int8 model's own weights and activation ranges (symmetric)")
        return prepare_int8_artifact_onnx(source, out, options)
    return prepare_onnx(source.checkpoint(precision).build(), out, precision, options, calibration)


# ---- build --------------------------------------------------------------------------------------


def _timing_cache_path(out: Path, record: dict[str, Any]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{record['gpu']}-sm{record['compute_capability']}-trt{record['tensorrt']}")
    return out.parent / f"tensorrt-{slug}.timing-cache"


def export(source: Path | SourceFile, out: Path, precision: str, options, calibration=None,
           reporter: Reporter = quiet) -> Path:
    reason = unavailable_reason()
    if reason:
        raise DependencyError(f"cannot build a TensorRT engine: {reason}", INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="edgekit-trt-") as scratch:
        onnx_path = prepare_source_onnx(source, Path(scratch) / f"model.{precision}.onnx", precision, options,
                                        calibration, reporter)
        return build_engine(onnx_path, Path(out), precision, options, reporter)


def build_engine(onnx_path: Path, out: Path, precision: str, options, reporter: Reporter = quiet) -> Path:
    import tensorrt as trt

    from ..artifacts import atomic_path, atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # strongly typed for every precision: fp32 too (weak typing is deprecated since 10.12)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
        name, image = network.get_input(0).name, tuple(network.get_input(0).shape)[1:]  # (C, H, W) as exported
        profile.set_shape(name, (1, *image), (DYNAMIC_OPT_BATCH, *image), (DYNAMIC_MAX_BATCH, *image))
        if config.add_optimization_profile(profile) < 0:
            raise UnsupportedError("TensorRT refused the batch profile", "export with a static --batch instead")
    record = device_record()
    cache_path = _timing_cache_path(out, record)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        reporter.info(f"tensorrt: the timing cache {cache_path.name} does not fit this TensorRT; timing from scratch")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
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


class _Staging:
    """A pinned (page-locked) host buffer and a device buffer of the same size, grown on demand.

    Pinned memory makes cudaMemcpyAsync a real DMA transfer; from pageable memory the driver
    first copies into its own pinned bounce buffer, synchronously.
    """

    def __init__(self, cudart) -> None:
        self.cudart = cudart
        self.host = self.device = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        self.free()
        self.host = _check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        self.device = _check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        self.nbytes = nbytes

    def view(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        raw = (ctypes.c_ubyte * (count * dtype.itemsize)).from_address(int(self.host))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.host:
            self.cudart.cudaFreeHost(self.host)
        if self.device:
            self.cudart.cudaFree(self.device)
        self.host = self.device = 0
        self.nbytes = 0


class TensorRTRunner:
    name = "tensorrt"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise DependencyError(f"cannot run a TensorRT engine: {reason}", INSTALL_HINT)
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
        if self.context is None:
            raise DependencyError(f"TensorRT could not create an execution context for {path.name}",
                                  "the GPU may be out of memory: check nvidia-smi")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.input_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        # a dynamic engine's profile 0: (min, opt, max) shapes; batches above max run in chunks
        self.max_batch = (self.fixed_batch if self.fixed_batch else
                          int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0]))
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._input = _Staging(self.cudart)
        self._output = _Staging(self.cudart)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if not self.context.set_input_shape(self.input_name, batch.shape):
            raise UnsupportedError(f"the engine does not accept input shape {batch.shape}",
                                   f"it takes batches of 1..{self.max_batch} images of 3x32x32")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        if any(dim < 0 for dim in out_shape):
            raise UnsupportedError(f"TensorRT left the output shape unresolved ({out_shape})",
                                   "rebuild the engine with `edgekit export --target tensorrt`")
        out_nbytes = int(np.prod(out_shape)) * np.dtype(self.output_dtype).itemsize
        self._input.ensure(batch.nbytes)
        self._output.ensure(out_nbytes)
        self._input.view(batch.shape, self.input_dtype)[...] = batch
        for name, pointer in ((self.input_name, self._input.device), (self.output_name, self._output.device)):
            if not self.context.set_tensor_address(name, int(pointer)):
                raise UnsupportedError(f"TensorRT rejected the buffer for {name}", "rebuild the engine")
        _check(cudart.cudaMemcpyAsync(self._input.device, self._input.host, batch.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "cudaMemcpyAsync")
        if not self.context.execute_async_v3(int(self.stream)):  # the binding takes the handle as an int
            raise UnsupportedError("TensorRT execution failed", "rebuild the engine; check the GPU with nvidia-smi")
        _check(cudart.cudaMemcpyAsync(self._output.host, self._output.device, out_nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        # copy out of the staging buffer: the next call overwrites it
        return self._output.view(out_shape, self.output_dtype).astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            raise ConfigError("predict needs at least one image", "pass a batch of shape [N, 3, 32, 32] with N >= 1")
        if self.fixed_batch:
            return predict_batched(self._run, batch, self.fixed_batch, pad=True)
        # a dynamic engine runs a batch above its profile's maximum in pieces rather than failing set_input_shape
        return predict_batched(self._run, batch, self.max_batch)

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for staging in (getattr(self, "_input", None), getattr(self, "_output", None)):
            if staging is not None:
                staging.free()
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)


def load_runner(path: Path, threads: int | None = None) -> TensorRTRunner:
    return TensorRTRunner(path, threads)


# ---- census -------------------------------------------------------------------------------------

# Inspector type words, most specific first ("bfloat16" before "float", "int8" before "int").
# TensorRT 10 writes one "Format/Datatype" string per tensor ("Row major linear FP32 format",
# "Channel major FP16 format where channel % 8 == 0", older "... Int8 format."); TensorRT 11
# splits it into "Format" and "DataType" ("Float", "Half", "Int8", ...). Weights say "Type".
_TYPE_WORDS = (("bf16", "bf16"), ("bfloat16", "bf16"), ("fp8", "fp8"), ("e4m3", "fp8"), ("fp4", "fp4"),
               ("int8", "int8"), ("int4", "int4"), ("int32", "int32"), ("int64", "int64"), ("uint8", "uint8"),
               ("bool", "bool"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"))


def inspector_dtype(text: str) -> str:
    """"Row major linear FP32 format" -> fp32, "Half" -> fp16, "Int32" -> int32 (never int8)."""
    words = re.findall(r"[a-z0-9]+", str(text).lower())
    for key, label in _TYPE_WORDS:
        if key in words or (key in ("fp8", "e4m3") and any(w.startswith(key) for w in words)):
            return label
    return "unknown"


def tensor_dtype(tensor: dict[str, Any]) -> str:
    """One tensor of an inspector layer, in either TensorRT 10's or 11's layout."""
    for key in ("DataType", "Format/Datatype", "Format"):
        if key in tensor:
            dtype = inspector_dtype(tensor[key])
            if dtype != "unknown":
                return dtype
    return "unknown"


def census_from_inspector(info: dict[str, Any]) -> dict[str, Any]:
    """Layers by the dtype of their first output, and weights by dtype, from inspector JSON."""
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    layers_by_dtype: dict[str, int] = {}
    weights: dict[str, int] = {}
    for layer in layers:
        outputs = layer.get("Outputs") or []
        dtype = tensor_dtype(outputs[0]) if outputs and isinstance(outputs[0], dict) else "unknown"
        layers_by_dtype[dtype] = layers_by_dtype.get(dtype, 0) + 1
        w = layer.get("Weights")
        if isinstance(w, dict) and w.get("Count"):
            key = inspector_dtype(w.get("Type", w.get("DataType", "")))
            weights[key] = weights.get(key, 0) + int(w["Count"])
    io = {t.get("Name"): tensor_dtype(t) for t in info.get("I/O Tensors", []) if isinstance(t, dict)}
    return {"format": "tensorrt", "layers": len(layers), "layers_by_output_dtype": layers_by_dtype,
            "weights_by_dtype": weights, **({"io_dtypes": io} if io else {})}


def census(path: Path) -> dict[str, Any]:
    """Layers and their weights by type, from TensorRT's engine inspector (what the engine runs)."""
    runner = TensorRTRunner(path)
    inspector = runner.engine.create_engine_inspector()
    if inspector is None:
        raise DependencyError("TensorRT could not create an engine inspector", "rebuild the engine")
    info = json.loads(inspector.get_engine_information(runner.trt.LayerInformationFormat.JSON))
    return census_from_inspector(info) | {"engine": device_record()}
