"""The calibration set: one definition, shared by every int8 target.

Torch static PTQ, ONNX QDQ, TensorRT and TFLite full-integer all pick activation ranges from
sample images. If each picked its own images, their int8 accuracies would differ for reasons
that have nothing to do with the runtime. So the images are chosen once, written down as a
small JSON definition (calibration/*.json), and every int8 path loads that file.

A definition holds:
  * seeded, class-balanced indices into the *training* split exactly as `load_data` returns
    it (after the validation split is carved out), plus the DataConfig fields that decide that
    split (val_size, seed, train_per_class) and the source's pixel fingerprint;
  * the sha256 of the selected decoded pixels (uint8 NCHW bytes), so different data, a
    different split or a different JPEG decoder is caught, not silently calibrated on;
  * the preprocessing (uint8 -> float32 / 255 in [0, 1], NCHW; mean/std applied inside the
    model, with the model's mean/std recorded) and a sha256 of that description, so a model
    expecting other inputs is refused.

Indices, not pixels, are stored: the file stays small enough to commit, and the pixel hash
proves the re-selected images are the ones the definition was made from. A mismatch is an
error (CalibrationError naming the fix), never a warning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import (Manifest, atomic_write_text, guard_output, publish, remove_path, sha256_file,
                        staging_path)
from .config import CalibrationConfig, DataConfig, DataSource
from .data import DataSplits, to_unit_float
from .errors import CalibrationError, ConfigError
from .model import CIFAR10_MEAN, CIFAR10_STD, ModelSpec
from .timing import batch_slices

CALIBRATION_FORMAT = "edgekit-calibration/1"
DEFAULT_SIZE = CalibrationConfig.size
STANDARD_SIZES = (128, 512, 1024)
DEFAULT_DIR = Path("calibration")


@dataclass
class CalibrationSet:
    images: np.ndarray  # float32 [N, 3, 32, 32] in [0, 1], exactly what the model takes
    labels: np.ndarray  # int64 [N]
    sha256: str  # of the selected decoded uint8 pixels (the identity of the images)
    definition: dict[str, Any]
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)  # uint8 [N, 3, 32, 32]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def preprocessing_sha256(self) -> str:
        return self.definition["preprocessing"]["sha256"]

    def manifest_ref(self) -> dict[str, Any]:
        """What a manifest records about the calibration set it was made with."""
        return {
            "path": str(self.path) if self.path else None,
            "file_sha256": sha256_file(self.path) if self.path and Path(self.path).exists() else None,
            "name": self.definition.get("name"),
            "size": len(self),
            "seed": self.definition.get("seed"),
            "pixels_sha256": self.sha256,
            "preprocessing_sha256": self.preprocessing_sha256,
        }

    def batches(self, batch_size: int = 128):
        """float32 torch batches, for feeding observers."""
        for batch in batch_slices(len(self), batch_size):
            yield torch.from_numpy(self.images[batch])


# ---- hashes and descriptions -----------------------------------------------------------------


def pixels_sha256(pixels: torch.Tensor | np.ndarray) -> str:
    """sha256 over shape and uint8 bytes (shape included so a reshaped set cannot collide)."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if array.dtype != np.uint8:
        raise CalibrationError(f"calibration pixels must be uint8, got {array.dtype}",
                               "pass the decoded uint8 images from edgekit.data.load_data")
    digest = hashlib.sha256()
    digest.update(json.dumps(list(array.shape)).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def preprocessing_description(mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD) -> dict:
    """The input pipeline from decoded pixels to model input, with its own hash."""
    description = {
        "input": "decoded RGB pixels, uint8, NCHW [N, 3, 32, 32]",
        "to_float": "float32 = uint8 / 255, range [0, 1]",
        "scale": 1.0 / 255.0,
        "layout": "NCHW",
        "normalization": "inside the model (Normalize: (x - mean) / std)",
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
    }
    description["sha256"] = _description_hash(description)
    return description


def _description_hash(description: dict) -> str:
    body = {k: v for k, v in description.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _data_record(data: DataSplits, config: DataConfig) -> dict[str, Any]:
    record: dict[str, Any] = {
        "source": config.source.value if isinstance(config.source, DataSource) else str(config.source),
        "data_dir": config.data_dir,
        "origin": data.source,
        "fingerprint": data.fingerprint,
        "classes": list(data.classes),
        "split": "train (after the validation split is carved out)",
        "train_size": int(len(data.train_y)),
        "val_size": config.val_size,
        "seed": config.seed,
        "train_per_class": config.train_per_class,
    }
    if record["source"] == DataSource.synthetic.value:
        record["synthetic_train"] = config.synthetic_train
        record["synthetic_test"] = config.synthetic_test
    return record


def default_name(config: DataConfig, size: int) -> str:
    source = config.source.value if isinstance(config.source, DataSource) else str(config.source)
    base = Path(config.data_dir).name if source == DataSource.folder.value and config.data_dir else source
    return f"{base}-{size}"


# ---- make / save / load ----------------------------------------------------------------------


def select_indices(labels: torch.Tensor, size: int, seed: int, num_classes: int) -> np.ndarray:
    """Seeded, class-balanced: size // C per class, the remainder to classes drawn by the seed."""
    generator = torch.Generator().manual_seed(seed)
    per_class = np.full(num_classes, size // num_classes)
    extra = torch.randperm(num_classes, generator=generator)[: size % num_classes].numpy()
    per_class[extra] += 1
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class[label]:
            raise ConfigError(f"class {label} has only {len(members)} training images; a calibration set of "
                              f"{size} needs {per_class[label]} per class", "use a smaller --size")
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[: per_class[label]])
    return torch.cat(chosen).sort().values.numpy().astype(np.int64)


def make_calibration(data: DataSplits, data_config: DataConfig, size: int = DEFAULT_SIZE, seed: int = 0,
                     model_spec: ModelSpec | None = None, name: str | None = None) -> CalibrationSet:
    """Choose `size` class-balanced training images with `seed`; hash their pixels and preprocessing."""
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"calibration size must be a positive integer, got {size!r}", f"use e.g. --size {DEFAULT_SIZE}")
    if size > len(data.train_y):
        raise ConfigError(f"calibration size {size} exceeds the {len(data.train_y)} training images",
                          "use a smaller --size")
    if size < data.num_classes:
        raise ConfigError(f"calibration size {size} is smaller than the {data.num_classes} classes",
                          "use at least one image per class (e.g. --size 128)")
    indices = select_indices(data.train_y, size, seed, data.num_classes)
    pixels = data.train_x[torch.from_numpy(indices)]
    labels = data.train_y[torch.from_numpy(indices)]
    spec = model_spec or ModelSpec()
    pixel_hash = pixels_sha256(pixels)
    definition = {
        "format": CALIBRATION_FORMAT,
        "name": name or default_name(data_config, size),
        "size": size,
        "seed": seed,
        "data": _data_record(data, data_config),
        "indices": indices.tolist(),
        "class_counts": np.bincount(labels.numpy(), minlength=data.num_classes).tolist(),
        "pixels_sha256": pixel_hash,
        "preprocessing": preprocessing_description(spec.mean, spec.std),
    }
    return CalibrationSet(images=to_unit_float(pixels).numpy(), labels=labels.numpy(), sha256=pixel_hash,
                          definition=definition, pixels=pixels.numpy())


def save_calibration(cal: CalibrationSet, path: str | Path, force: bool = False, sources: tuple = ()) -> Path:
    """Write the definition (compact index list) and its manifest, staged and published together.

    An existing `path` is replaced only when it is an earlier edgekit calibration (or with
    `force`); never one of `sources` (the inputs of the command)."""
    path = Path(path)
    guard_output(path, "calibration", sources=sources, force=force)
    definition = dict(cal.definition)
    indices = definition.pop("indices")
    # One index list per line keeps the file diffable without one line per index.
    text = json.dumps(definition, indent=2)[:-2] + ',\n  "indices": ' + json.dumps(indices) + "\n}\n"
    staged = staging_path(path)
    remove_path(staged)
    try:
        atomic_write_text(staged, text)
        publish(staged, path, Manifest(
            kind="calibration", format="json", precision="uint8 pixels (indices only)",
            config={"size": cal.definition["size"], "seed": cal.definition["seed"],
                    "val_size": cal.definition["data"]["val_size"], "data_seed": cal.definition["data"]["seed"],
                    "train_per_class": cal.definition["data"]["train_per_class"]},
            seed=cal.definition["seed"],
            metrics={"images": len(cal), "class_counts": cal.definition["class_counts"]},
            extra={"pixels_sha256": cal.sha256, "preprocessing_sha256": cal.preprocessing_sha256,
                   "data_fingerprint": cal.definition["data"]["fingerprint"]}))
    finally:
        remove_path(staged)
    cal.path = path
    return path


def read_definition(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration definition not found: {path}",
                               f"make one with `edgekit calibrate --source ... --size {DEFAULT_SIZE}`")
    if path.is_dir():
        raise CalibrationError(f"{path} is a folder, not a calibration definition",
                               "pass a calibration/*.json written by `edgekit calibrate`")
    try:
        definition = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # an edgekit definition cut off mid-write reads the same as a stranger's file: say both
        raise CalibrationError(f"cannot read {path} as a calibration definition: it is not complete JSON "
                               f"(truncated, edited, or another file) ({exc})",
                               "pass a calibration/*.json written by `edgekit calibrate`, or re-create it") from exc
    if not isinstance(definition, dict) or definition.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path} has no edgekit calibration format entry, so it cannot be read as a "
                               "calibration definition",
                               "pass a calibration/*.json written by `edgekit calibrate`")
    _check_fields(definition, path)
    return definition


# The entries every reader of a definition uses, with their types.
_FIELDS = {"size": int, "seed": int, "data": dict, "indices": list, "pixels_sha256": str, "preprocessing": dict}
_DATA_FIELDS = {"source": str, "fingerprint": str, "origin": str, "val_size": int, "seed": int}


def _check_fields(definition: dict[str, Any], path: Path) -> None:
    for where, fields, holder in (("", _FIELDS, definition), ("data.", _DATA_FIELDS, definition.get("data"))):
        for key, kind in fields.items():
            value = holder.get(key) if isinstance(holder, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise CalibrationError(f"{path} is an edgekit calibration definition without a valid "
                                       f"'{where}{key}' entry: damaged or edited",
                                       "re-create it with `edgekit calibrate`")
    if definition["data"]["source"] not in {s.value for s in DataSource}:
        raise CalibrationError(f"{path}: unknown data source {definition['data']['source']!r}",
                               "re-create it with `edgekit calibrate`")


def calibration_data_config(path: str | Path, **overrides: Any) -> DataConfig:
    """The DataConfig that reproduces the split a definition was made from (for loading the data)."""
    record = read_definition(path)["data"]
    fields = {"source": DataSource(record["source"]), "data_dir": record.get("data_dir"),
              "val_size": record["val_size"], "seed": record["seed"], "train_per_class": record.get("train_per_class")}
    for key in ("synthetic_train", "synthetic_test"):
        if key in record:
            fields[key] = record[key]
    fields.update(overrides)
    return DataConfig(**fields)


def load_calibration(path: str | Path, data: DataSplits, model_spec: ModelSpec | None = None) -> CalibrationSet:
    """Re-select the images a definition names and prove they are the same pixels and preprocessing.

    Refuses (CalibrationError) a different data source, a different train/val split, edited
    pixels, an edited preprocessing block, or a model whose mean/std differ from the recorded ones.
    """
    path = Path(path)
    definition = read_definition(path)
    record = definition["data"]
    split_fields = (f"val_size={record['val_size']}, seed={record['seed']}, "
                    f"train_per_class={record.get('train_per_class')}")
    if data.fingerprint != record["fingerprint"]:
        raise CalibrationError(
            f"calibration set {path.name} was made from other data (fingerprint {record['fingerprint'][:12]}, "
            f"this data {data.fingerprint[:12]}, source {data.source})",
            f"load the data it was made from ({record['origin']}), or make a new set with `edgekit calibrate` "
            "for this data")
    indices = np.asarray(definition["indices"], dtype=np.int64)
    if len(indices) != definition["size"] or (len(indices) and (indices.min() < 0 or indices.max() >= len(data.train_y))):
        raise CalibrationError(
            f"calibration set {path.name} indexes outside this training split ({len(data.train_y)} images)",
            f"load the data with the recorded split ({split_fields}) or re-create the set")
    pixels = data.train_x[torch.from_numpy(indices)]
    labels = data.train_y[torch.from_numpy(indices)]
    pixel_hash = pixels_sha256(pixels)
    if pixel_hash != definition["pixels_sha256"]:
        raise CalibrationError(
            f"calibration set {path.name}: the selected pixels hash to {pixel_hash[:12]}, the definition "
            f"says {definition['pixels_sha256'][:12]} (other train/val split, other decoder, or edited images)",
            f"load the data with the recorded split ({split_fields}) or re-create the set with `edgekit calibrate`")
    stored = definition.get("preprocessing") or {}
    if stored.get("sha256") != _description_hash(stored):
        raise CalibrationError(f"calibration set {path.name}: its preprocessing block was edited (hash mismatch)",
                               "re-create the set with `edgekit calibrate`")
    expected = preprocessing_description(tuple(stored.get("mean", CIFAR10_MEAN)), tuple(stored.get("std", CIFAR10_STD)))
    if expected["sha256"] != stored["sha256"]:
        raise CalibrationError(f"calibration set {path.name} describes a preprocessing this edgekit does not apply",
                               "re-create the set with this version's `edgekit calibrate`")
    if model_spec is not None:
        model_pre = preprocessing_description(model_spec.mean, model_spec.std)
        if model_pre["sha256"] != stored["sha256"]:
            raise CalibrationError(
                f"calibration set {path.name} was made for inputs normalized with mean {stored['mean']} / std "
                f"{stored['std']}, but the model uses mean {model_pre['mean']} / std {model_pre['std']}",
                "make a calibration set for this model: `edgekit calibrate ... --checkpoint MODEL`")
    return CalibrationSet(images=to_unit_float(pixels).numpy(), labels=labels.numpy(), sha256=pixel_hash,
                          definition=definition, path=path, pixels=pixels.numpy())
