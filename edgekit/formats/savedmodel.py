"""TensorFlow SavedModel (fp32), for TF Serving and other TensorFlow deployers.

The same Keras twin the TFLite target converts (see keras_twin.py), written as a SavedModel
directory `<name>.savedmodel` with one signature, `serving_default`: input `pixels` float32
NHWC [N, 32, 32, 3] in [0, 1] (the model normalizes inside), output `logits` [N, C]. TF Serving
takes the directory as version folder contents (`models/<name>/1/` = this directory).

It carries edgekit's DeployMetadata (metadata.py) twice, both read with TensorFlow's own API:
a registered asset, assets/edgekit_metadata.json (`loaded.edgekit_metadata_file.asset_path`),
and a second signature, `edgekit_metadata`, that returns the JSON (`saved_model_cli show` lists it).

fp32 only: TensorFlow runs a SavedModel's float16/int8 weights no faster on CPU; smaller or
integer models are what the TFLite target is for.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import replace_path
from ..errors import CheckpointError, ConfigError, UnsupportedError
from ..report import Reporter, quiet
from ..timing import predict_batched
from .keras_twin import build_twin_from_file, require_tensorflow, runner_input, tensorflow_missing
from .metadata import SAVEDMODEL_ASSET, SAVEDMODEL_SIGNATURE, DeployMetadata, from_json
from .source import SourceFile

SIGNATURE = "serving_default"
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


def unavailable_reason() -> str | None:
    return tensorflow_missing("SavedModel export")


def _tf() -> Any:
    return require_tensorflow("SavedModel export")


@contextlib.contextmanager
def _atomic_dir(out: Path) -> Any:
    """Yield a temporary directory beside `out`; swap it into place only if the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        replace_path(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export(source: Path | SourceFile, out: Path, precision: str, options: Any, calibration: Any = None,
           reporter: Reporter = quiet) -> Path:
    """Write the SavedModel directory `out` from the edgekit checkpoint `source` (a path or the
    SourceFile an export has read); return `out`."""
    if precision != "fp32":
        raise UnsupportedError(f"the SavedModel target writes fp32 only, not '{precision}'",
                               "use --target tflite for fp16 or int8")
    if getattr(options, "int8_io", False):
        raise ConfigError("--int8-io does not apply to a SavedModel", "drop --int8-io, or export tflite int8")
    out = Path(out)
    tf = _tf()
    batch = None if options.dynamic_batch else int(options.batch)
    _, model = build_twin_from_file(source, batch, precision)
    # A plain tf.Module rather than Keras' ExportArchive: the archive tracks every variable under
    # two names and writes the weights twice (a 2x larger variables file, measured).
    spec = tf.TensorSpec([batch, *model.inputs[0].shape[1:]], tf.float32, name=INPUT_NAME)

    class Serving(tf.Module):
        def __init__(self, keras_model: Any) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[spec])
        def serve(self, pixels: Any) -> dict[str, Any]:
            return {OUTPUT_NAME: self.model(pixels, training=False)}

    module = Serving(model)
    reporter.info(f"savedmodel: writing {out.name}")
    with _atomic_dir(out) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: module.serve})
    return out


def write_metadata(path: Path, meta: DeployMetadata) -> DeployMetadata:
    """Complete `meta` from the serving signature and save the SavedModel again with the metadata
    asset and signature added (the variables and serving function are the same objects)."""
    tf = _tf()
    path = Path(path)
    loaded = tf.saved_model.load(str(path))
    serving = loaded.signatures[SIGNATURE]
    spec = serving.structured_input_signature[1][INPUT_NAME]
    meta = meta.with_io(input_name=INPUT_NAME, input_layout="NHWC",
                        input_shape=[None if d is None else int(d) for d in spec.shape.as_list()],
                        input_dtype=spec.dtype.name, output_name=OUTPUT_NAME, output_dtype="float32")
    text = meta.to_json()

    @tf.function(input_signature=[])
    def metadata() -> dict[str, Any]:
        return {"metadata": tf.constant(text)}

    with tempfile.TemporaryDirectory(prefix="edgekit-savedmodel-meta-") as scratch:
        asset = Path(scratch) / SAVEDMODEL_ASSET
        asset.write_text(text)
        loaded.edgekit_metadata_file = tf.saved_model.Asset(str(asset))
        loaded.edgekit_metadata = metadata
        with _atomic_dir(path) as tmp:
            tf.saved_model.save(loaded, str(tmp),
                                signatures={SIGNATURE: serving, SAVEDMODEL_SIGNATURE: metadata})
    return meta


def read_metadata(path: Path) -> DeployMetadata | None:
    """The metadata asset of the SavedModel directory, or None when it has none."""
    asset = Path(path) / "assets" / SAVEDMODEL_ASSET
    return from_json(asset.read_bytes(), str(path)) if asset.is_file() else None


class SavedModelRunner:
    name = "tf-savedmodel"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        path = Path(path)
        if not (path / "saved_model.pb").is_file():
            raise CheckpointError(f"no SavedModel at {path} (saved_model.pb missing)",
                                  "export one with `edgekit export --target savedmodel`")
        tf = _tf()
        if threads:
            # Only possible before TensorFlow's runtime starts; afterwards the first setting stays.
            with contextlib.suppress(RuntimeError):
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        try:
            self._fn = self._loaded.signatures[SIGNATURE]
        except KeyError:
            raise CheckpointError(f"{path} has no '{SIGNATURE}' signature", "export it again with edgekit") from None
        self._batch = self._fn.structured_input_signature[1][INPUT_NAME].shape[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        nhwc = runner_input(batch, self._fn.structured_input_signature[1][INPUT_NAME].shape)
        if not len(nhwc):
            return np.zeros((0, int(self._fn.structured_outputs[OUTPUT_NAME].shape[-1])), dtype=np.float32)
        run = lambda chunk: self._fn(**{INPUT_NAME: self._tf.constant(chunk)})[OUTPUT_NAME].numpy()  # noqa: E731
        # a static-batch signature only takes that batch size
        return predict_batched(run, nhwc, self._batch or 256, pad=bool(self._batch))


def load_runner(path: Path, threads: int | None = None) -> SavedModelRunner:
    return SavedModelRunner(path, threads)


def census(path: Path) -> dict:
    """Variables counted by dtype (read from the variables checkpoint) and the serving graph's ops."""
    path = Path(path)
    tf = _tf()
    try:
        reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    except Exception as exc:  # NotFoundError / DataLossError
        raise CheckpointError(f"cannot read the variables of {path} ({exc})", "export it again") from exc
    shapes = reader.get_variable_to_shape_map()
    weights: dict[str, int] = {}
    tensors: dict[str, int] = {}
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        key = dtype.name
        weights[key] = weights.get(key, 0) + int(np.prod(shapes[name]))
        tensors[key] = tensors.get(key, 0) + 1
    ops = _serving_ops(path)
    float_weights = {"float32", "float16", "bfloat16"} & set(weights)
    precision = "fp32" if float_weights == {"float32"} else ("fp16" if float_weights == {"float16"} else "mixed")
    return {"weights_by_dtype": weights, "weight_tensors_by_dtype": tensors, "ops_by_type": ops,
            "precision": precision}


def _serving_ops(path: Path) -> dict[str, int]:
    """Op types of the serving function that do compute (variable plumbing left out)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    plumbing = {"ReadVariableOp", "DisableCopyOnRead", "Identity", "NoOp", "Const", "StatefulPartitionedCall", "PartitionedCall",
                "Placeholder", "VarHandleOp", "AssignVariableOp", "RestoreV2", "SaveV2", "MergeV2Checkpoints",
                "ShardedFilename", "StringJoin", "StaticRegexFullMatch", "Select", "Pack", "IdentityN"}
    best: dict[str, int] = {}
    # The serving body is the function with the most compute ops; summing every function would
    # count it more than once (the signature wrapper and the traced call nest).
    for function in proto.meta_graphs[0].graph_def.library.function:
        ops: dict[str, int] = {}
        for node in function.node_def:
            if node.op not in plumbing:
                ops[node.op] = ops.get(node.op, 0) + 1
        if sum(ops.values()) > sum(best.values()):
            best = ops
    return best
