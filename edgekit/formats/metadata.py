"""What an exported file says about itself: one schema for every format.

A file copied to a device alone must tell its runner everything the README would otherwise:
the class names, the input layout, shape and dtype, how pixels are prepared, and for integer
I/O how floats map to integers. `DeployMetadata` is that record; each format module writes it
with its format's own mechanism (`write_metadata`) and reads it back from the file alone
(`read_metadata`):

    ONNX        metadata_props, one key per field, each value JSON
                (onnxruntime: session.get_modelmeta().custom_metadata_map;
                OpenVINO: model.get_rt_info(["framework", key]))
    TFLite      the flatbuffer's Model.metadata: an entry named "edgekit" whose buffer holds the
                JSON (written and read with LiteRT's own schema_py_generated / flatbuffer_utils)
    SavedModel  a registered asset assets/edgekit_metadata.json and a signature
                `edgekit_metadata` returning the JSON
    TensorRT    an engine has no room for it: the manifest beside the engine carries it
                (extra.metadata), as every export's manifest does

Preprocessing is recorded as edgekit really does it (edgekit/data.py, model.py): decode as
RGB, resize to the input size with bilinear filtering when it differs, scale the uint8 pixels
by 1/255 to [0, 1] floats. The network normalizes with `mean`/`std` inside itself, so a
runner must *not* subtract or divide them (they are recorded so the file can be checked).
For integer input: q = clip(round(x / scale) + zero_point) of those [0, 1] floats; integer
output: logits = (q - zero_point) * scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata as _importlib_metadata
from typing import Any

from ..errors import CheckpointError

SCHEMA = "edgekit-deploy/1"
TFLITE_METADATA_NAME = "edgekit"  # the Model.metadata entry of a .tflite file
SAVEDMODEL_ASSET = "edgekit_metadata.json"
SAVEDMODEL_SIGNATURE = "edgekit_metadata"  # returns {"metadata": <JSON string>}


@dataclass(frozen=True)
class DeployMetadata:
    classes: list[str]
    format: str
    precision: str  # what the export asked for (the manifest holds the counted label)
    input_name: str = ""
    input_layout: str = "NCHW"  # NCHW | NHWC
    input_shape: list[int | None] = field(default_factory=list)  # None: any batch size
    input_dtype: str = "float32"  # float32 | int8 | uint8
    output_name: str = ""
    output_dtype: str = "float32"
    output: str = "logits"  # raw logits: apply softmax for probabilities
    dynamic_batch: bool = False
    color: str = "RGB"
    resize: str = "bilinear"  # to the input's height x width, only when the image differs
    pixel_scale: float = 1 / 255  # float input = uint8 pixel * pixel_scale
    pixel_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    normalized_inside: bool = True  # mean/std are applied by the network: do not apply them again
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    input_quantization: dict[str, float] | None = None  # {"scale", "zero_point"} for integer input
    output_quantization: dict[str, float] | None = None
    edgekit_version: str = ""
    source_file: str = ""
    source_sha256: str = ""  # the sha256 the export manifest records for its source (parent)
    schema: str = SCHEMA

    # ---- plain data ----

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_props(self) -> dict[str, str]:
        """One string per field (ONNX metadata_props), each value JSON-encoded."""
        return {key: json.dumps(value) for key, value in self.to_dict().items()}

    @property
    def height_width(self) -> tuple[int, int]:
        spatial = self.input_shape[1:3] if self.input_layout == "NHWC" else self.input_shape[2:4]
        return int(spatial[0]), int(spatial[1])

    def with_io(self, **changes: Any) -> "DeployMetadata":
        """The same record with what the format read from its own file (layout, shape, dtypes, quantization)."""
        return replace(self, **changes)


def from_dict(values: dict[str, Any], where: str = "the file") -> DeployMetadata:
    if values.get("schema") != SCHEMA:
        raise CheckpointError(f"{where} carries metadata of schema {values.get('schema')!r}, not {SCHEMA}",
                              "re-export it with this edgekit version")
    known = {f.name for f in fields(DeployMetadata)}
    return DeployMetadata(**{k: v for k, v in values.items() if k in known})


def from_json(text: str | bytes, where: str = "the file") -> DeployMetadata:
    try:
        values = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"the edgekit metadata in {where} is not valid JSON ({exc})", "re-export it") from exc
    return from_dict(values, where)


def from_props(props: dict[str, str], where: str = "the file") -> DeployMetadata | None:
    """From ONNX metadata_props; None when the file carries no edgekit metadata."""
    if "schema" not in props:
        return None
    try:
        values = {key: json.loads(value) for key, value in props.items() if key in DeployMetadata.__dataclass_fields__}
    except ValueError as exc:
        raise CheckpointError(f"the edgekit metadata in {where} is not valid JSON ({exc})", "re-export it") from exc
    return from_dict(values, where)


def edgekit_version() -> str:
    try:
        return _importlib_metadata.version("edgekit")
    except _importlib_metadata.PackageNotFoundError:
        return "unknown"


def describe_export(classes: list[str], mean: tuple[float, ...], std: tuple[float, ...], format_name: str,
                    precision: str, dynamic_batch: bool, source_file: str, source_sha256: str) -> DeployMetadata:
    """What the export stage knows before the file exists; the format fills in its I/O (`with_io`)."""
    return DeployMetadata(classes=list(classes), format=format_name, precision=precision,
                          dynamic_batch=bool(dynamic_batch), mean=[float(m) for m in mean],
                          std=[float(s) for s in std], edgekit_version=edgekit_version(),
                          source_file=source_file, source_sha256=source_sha256)


def quantization(scale: float, zero_point: int) -> dict[str, float]:
    return {"scale": float(scale), "zero_point": int(zero_point)}


def summary_rows(meta: DeployMetadata) -> list[list[Any]]:
    """Rows for `edgekit info`."""
    shape = "x".join("N" if d is None else str(d) for d in meta.input_shape)
    rows = [["classes", ", ".join(meta.classes)],
            ["input", f"{meta.input_name} {meta.input_dtype} {meta.input_layout} {shape}"],
            ["preprocessing", f"{meta.color}, resize {meta.resize} to {'x'.join(map(str, meta.height_width))}, "
                              f"pixels x {meta.pixel_scale:.6g} -> {meta.pixel_range}"
                              + (", normalized inside the model" if meta.normalized_inside else "")],
            ["output", f"{meta.output_name} {meta.output_dtype} ({meta.output})"]]
    for label, quant in (("input quantization", meta.input_quantization),
                         ("output quantization", meta.output_quantization)):
        if quant:
            rows.append([label, f"scale {quant['scale']:.6g}, zero point {quant['zero_point']}"])
    rows += [["made by", f"edgekit {meta.edgekit_version} from {meta.source_file} ({meta.source_sha256[:12]})"]]
    return rows
