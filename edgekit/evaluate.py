"""`edgekit eval`: the accuracy of any file edgekit writes on a split of the data its lineage learned,
with optional test-time augmentation reported beside the plain figure.

Every format runs through its runner from the format table (an fp32 or pruned checkpoint, an int8
`.pt` from `edgekit quantize`, ONNX, TFLite, SavedModel, a TensorRT engine where TensorRT runs),
so the figure is what that file computes, not what its parent did. The data comes the way bench
gets it: the data config recorded at the root of the file's lineage, unless --source/--data-dir
say otherwise.

TTA averages the logits of several views of each image (flip: the image and its mirror; flip-
translate: also both mirrored after a 1-pixel reflect-padded shift up-left and down-right, the
airbench weighting). It costs 2 or 6 forward passes an image, which no deployed model pays, so
it is a figure of the model's reach, never of a deployment: it never enters an exported file,
the bench, or any latency, and eval always reports the plain accuracy beside it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .artifacts import read_manifest
from .config import DataConfig, DataSource, EvalConfig, Split, Tta
from .data import to_unit_float
from .errors import DataError, EdgekitError
from .flips import top1_accuracy
from .formats import SOURCE_FORMAT, format_of_path, load_artifact_runner, predict_all
from .lineage import data_config_of, lineage
from .model import load_plain
from .report import Reporter, quiet

@dataclass
class EvalResult:
    artifact: str
    format: str
    runner: str
    data: str
    split: str
    images: int
    accuracy: float
    loss: float
    tta: str
    tta_accuracy: dict[str, float]  # per TTA level asked for or below it, plain excluded; empty without TTA
    recorded_accuracy: float | None  # what the file's manifest recorded for this split, if anything
    classes: list[str]
    confusion: list[list[int]]  # [true][predicted] counts of the plain predictions

    def rows(self) -> list[list[Any]]:
        rows = [["artifact", self.artifact], ["format", f"{self.format} ({self.runner})"], ["data", self.data],
                ["split", f"{self.split} ({self.images} images)"], ["accuracy", f"{self.accuracy:.2%}"],
                ["loss", round(self.loss, 4)]]
        for level, accuracy in self.tta_accuracy.items():
            rows.append([f"TTA {level} ({tta_forward_passes(Tta(level))} passes)", f"{accuracy:.2%}"])
        if self.recorded_accuracy is not None:
            rows.append([f"recorded {self.split} accuracy", f"{self.recorded_accuracy:.2%}"])
        return rows


def tta_views(images: np.ndarray, tta: Tta) -> Iterator[tuple[float, np.ndarray]]:
    """(weight, view) pairs over NCHW float images; the weights sum to 1. Views are made one at a
    time, so a large split never holds six copies."""
    tta = Tta(tta)

    def mirrored(x: np.ndarray, weight: float):
        yield weight / 2, x
        yield weight / 2, np.ascontiguousarray(x[..., ::-1])

    if tta is Tta.none:
        yield 1.0, images
    elif tta is Tta.flip:
        yield from mirrored(images, 1.0)
    else:
        height, width = images.shape[2:]
        padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        yield from mirrored(images, 0.5)
        for top_left in ((0, 0), (2, 2)):  # shifted down-right, then up-left, by one pixel
            row, col = top_left
            yield from mirrored(np.ascontiguousarray(padded[:, :, row:row + height, col:col + width]), 0.25)


def tta_forward_passes(tta: Tta) -> int:
    return {Tta.none: 1, Tta.flip: 2, Tta.flip_translate: 6}[Tta(tta)]


def tta_logits(runner, images: np.ndarray, tta: Tta, batch: int) -> dict[Tta, np.ndarray]:
    """Logits of every TTA level up to `tta`, from one pass over its views: the views of each level
    begin the next one's (plain, then its mirror, then the shifts), so flip comes free with
    flip-translate and plain with both."""
    levels = [level for level in Tta if tta_forward_passes(level) <= tta_forward_passes(tta)]
    total, weight_seen, out = None, 0.0, {}
    for index, (weight, view) in enumerate(tta_views(images, tta), start=1):
        logits = predict_all(runner, view, batch)[0].astype(np.float64) * weight
        total = logits if total is None else total + logits
        weight_seen += weight
        for level in levels:
            if tta_forward_passes(level) == index:  # the first `index` views, renormalised, are that level
                out[level] = (total / weight_seen).astype(np.float32)
    return out


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else 0.0


def confusion_counts(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    counts = np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes).tolist()


def _data_config(artifact: Path, source: DataSource | None, data_dir: str | None) -> DataConfig:
    try:
        config = data_config_of(lineage(artifact))
    except EdgekitError:
        if source is None:
            raise
        config = DataConfig()
    if source is not None:
        config.source = DataSource(source)
    if data_dir is not None:
        config.data_dir = str(data_dir)
    return config


def _file_classes(artifact: Path) -> list[str] | None:
    """The class names the file itself records: a torch file's payload, an export's deploy metadata."""
    fmt = format_of_path(artifact)
    with contextlib.suppress(Exception):  # a file without them is checked by its output width alone
        if fmt is SOURCE_FORMAT:
            return list(load_plain(artifact).get("classes") or []) or None
        meta = fmt.module().read_metadata(artifact)
        return list(meta.classes) if meta is not None and meta.classes else None
    return None


def evaluate_artifact(artifact: Path, config: EvalConfig | None = None, source: DataSource | None = None,
                      data_dir: str | Path | None = None, reporter: Reporter = quiet) -> EvalResult:
    """Score `artifact` on the split `config` names; TTA beside the plain figure when asked."""
    from .data import load_data  # looked up per call, like the other stages: the option sweep replaces it

    config = (config or EvalConfig()).validate()
    artifact = Path(artifact)
    runner = load_artifact_runner(artifact, config.threads)  # checks the file (check_artifact) before the data
    data_config = _data_config(artifact, source, str(data_dir) if data_dir is not None else None).validate()
    data = load_data(data_config, reporter)
    recorded_classes = _file_classes(artifact)
    if recorded_classes and recorded_classes != list(data.classes):
        raise DataError(f"{artifact.name} was trained on classes {recorded_classes}, the data has {data.classes}",
                        "pass the data the model was trained on (--source/--data-dir)")
    pixels, labels = (data.test_x, data.test_y) if Split(config.split) is Split.test else (data.val_x, data.val_y)
    images, labels = to_unit_float(pixels).numpy(), labels.numpy()
    tta = Tta(config.tta)
    if tta is not Tta.none:
        reporter.info(f"eval: TTA {tta.value}, {tta_forward_passes(tta)} forward passes over {len(labels)} images")
    by_level = tta_logits(runner, images, tta, config.batch_size)
    logits = by_level.pop(Tta.none)
    if logits.ndim != 2 or logits.shape[1] != data.num_classes:
        raise DataError(f"{artifact.name} gives {logits.shape[1:]} outputs an image, the data has "
                        f"{data.num_classes} classes", "pass the data the model was trained on (--source/--data-dir)")
    tta_accuracy = {level.value: top1_accuracy(level_logits, labels) for level, level_logits in by_level.items()}
    recorded = None
    with contextlib.suppress(EdgekitError):
        metrics = read_manifest(artifact).get("metrics") or {}
        recorded = metrics.get(f"{Split(config.split).value}_accuracy")
        recorded = float(recorded) if isinstance(recorded, (int, float)) else None
    return EvalResult(
        artifact=str(artifact), format=format_of_path(artifact).name, runner=getattr(runner, "name", "?"),
        data=data.source, split=Split(config.split).value, images=int(len(labels)),
        accuracy=top1_accuracy(logits, labels),
        loss=cross_entropy(logits, labels), tta=tta.value, tta_accuracy=tta_accuracy, recorded_accuracy=recorded,
        classes=list(data.classes), confusion=confusion_counts(logits.argmax(1), labels, data.num_classes))
