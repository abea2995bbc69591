"""The parity gate and the precision census.

An exported file is only as good as its agreement with the model it came from. `parity` runs
the source runner and the exported runner on the same seeded real images and measures top-1
agreement, logit error and cosine similarity; `check` refuses a file beyond the tolerance of its
(target, precision) row, read from the format table (edgekit.formats: each format owns its
tolerances). Against an int8 source, an accuracy drop is refused only when it is also beyond
chance (DROP_SIGNIFICANCE below). `precision_label` names what a file holds from its
counted weights, never from the flag that asked for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import ParityError, UnsupportedError
from .flips import mcnemar_exact
from .formats import FORMATS, Tolerance
from .timing import predict_batched


# Two int8 renderings of one integer model (torch's requantizing kernels, ONNX Runtime's
# QLinearConv, which does not clip at x86's 7-bit top, TFLite's own calibration) differ by rounding;
# on a model with small logit margins that flips images both ways. An accuracy drop below an int8
# source is therefore refused only when it is beyond the allowance *and* the flips are one-sided
# beyond chance (exact McNemar on the images only one of the two got right).
DROP_SIGNIFICANCE = 0.05

# Layer-wise relative error above which `--debug-parity` calls a layer divergent.
LAYER_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.15}


@dataclass
class ParityReport:
    images: int
    top1_agreement: float
    max_abs: float
    mean_abs: float
    cosine_mean: float
    cosine_min: float
    source_accuracy: float | None  # None: no labels given (a module of a user's own, edgekit.own_model)
    exported_accuracy: float | None
    worst: list[int] = field(default_factory=list)  # image indices: disagreements first, then largest error
    source_only_correct: int = 0  # images the source got right and the export wrong
    exported_only_correct: int = 0
    source_name: str = ""
    exported_name: str = ""

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.source_accuracy is None or self.exported_accuracy is None:
            return None
        return 100.0 * (self.source_accuracy - self.exported_accuracy)

    @property
    def drop_p_value(self) -> float:
        """Exact McNemar: how likely flips this one-sided are when neither model is better."""
        return mcnemar_exact(self.source_only_correct, self.exported_only_correct)

    def as_metrics(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy_drop_points"] = self.accuracy_drop_points
        data["drop_p_value"] = self.drop_p_value
        return data


def _predict_all(runner, images: np.ndarray, batch_size: int) -> np.ndarray:
    return predict_batched(runner.predict, images, batch_size)


def parity(source_runner, exported_runner, images: np.ndarray, labels: np.ndarray | None, batch_size: int = 64,
           worst_k: int = 8, source_logits: np.ndarray | None = None) -> ParityReport:
    """Run both runners on the same images; compare logits and predictions. `source_logits`: the
    source runner's logits on `images` when the caller has them already (one source against
    several exported files), so the source is not run again.

    Without `labels` agreement, logit error and cosine are measured and the accuracies are None
    (the gate's accuracy-drop row is then not applied: nothing says which answer is right)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if source_logits is not None and len(source_logits) != len(images):
        raise ValueError(f"source_logits has {len(source_logits)} rows for {len(images)} images")
    ref = _predict_all(source_runner, images, batch_size) if source_logits is None else source_logits
    got = _predict_all(exported_runner, images, batch_size)
    if ref.shape != got.shape:
        raise ParityError(f"exported model returns logits of shape {got.shape[1:]}, source {ref.shape[1:]}",
                          "the export lost or changed the classifier head; re-export")
    diff = np.abs(ref - got)
    if not np.isfinite(got).all():
        diff = np.where(np.isfinite(got), diff, np.inf)
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.where(norms > 0, (ref * got).sum(1) / np.maximum(norms, 1e-30), 0.0)
    cosine = np.nan_to_num(cosine, nan=-1.0)
    per_image = diff.max(1)
    order = np.lexsort((-per_image, ref_top == got_top))  # disagreements first, then by error
    if labels is None:
        ref_right = got_right = None
    else:
        labels = np.asarray(labels)
        ref_right, got_right = ref_top == labels, got_top == labels
    return ParityReport(
        images=len(images),
        top1_agreement=float((ref_top == got_top).mean()),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        source_accuracy=None if ref_right is None else float(ref_right.mean()),
        exported_accuracy=None if got_right is None else float(got_right.mean()),
        worst=[int(i) for i in order[:worst_k]],
        source_only_correct=0 if ref_right is None else int((ref_right & ~got_right).sum()),
        exported_only_correct=0 if got_right is None else int((got_right & ~ref_right).sum()),
        source_name=getattr(source_runner, "name", ""),
        exported_name=getattr(exported_runner, "name", ""),
    )


def tolerance_for(target: str, precision: str) -> Tolerance:
    fmt = FORMATS.get(target)
    tolerance = fmt.tolerances.get(precision) if fmt is not None else None
    if tolerance is None:
        raise UnsupportedError(f"no parity tolerance for {target} {precision}",
                               "add it to the format's tolerances in edgekit/formats/__init__.py")
    return tolerance


def violations(report: ParityReport, target: str, precision: str, source_precision: str = "fp32") -> list[str]:
    tol = tolerance_for(target, precision)
    problems = []
    if report.top1_agreement < tol.min_agreement:
        problems.append(f"top-1 agreement {report.top1_agreement:.2%} < {tol.min_agreement:.2%}")
    if tol.max_abs is not None and not report.max_abs <= tol.max_abs:
        problems.append(f"max |logit error| {report.max_abs:.3g} > {tol.max_abs:.3g}")
    if tol.min_cosine is not None and not report.cosine_mean >= tol.min_cosine:
        problems.append(f"mean cosine {report.cosine_mean:.6f} < {tol.min_cosine}")
    int8_source = source_precision == "int8"
    max_drop = tol.max_drop_vs_int8_source if int8_source else tol.max_drop_vs_fp32_source
    beyond_chance = not int8_source or report.drop_p_value < DROP_SIGNIFICANCE
    drop = report.accuracy_drop_points  # None without labels
    if max_drop is not None and drop is not None and drop > max_drop and beyond_chance:
        problems.append(f"accuracy {report.exported_accuracy:.2%} is {report.accuracy_drop_points:.2f} points "
                        f"below the {source_precision} source's {report.source_accuracy:.2%} (allowed {max_drop}"
                        + (f"; {report.source_only_correct} images only the source got right vs "
                           f"{report.exported_only_correct} only the export, McNemar p = {report.drop_p_value:.3g})"
                           if int8_source else ")"))
    return problems


def check(report: ParityReport, target: str, precision: str, source_precision: str = "fp32") -> ParityReport:
    """Raise ParityError naming the worst images when the report is beyond tolerance."""
    problems = violations(report, target, precision, source_precision)
    if problems:
        raise ParityError(
            f"{target} {precision} export fails the parity gate on {report.images} images: " + "; ".join(problems)
            + f"; worst images (test-subset indices): {report.worst}",
            "re-run with --debug-parity to find the first divergent layer, or --keep-failed to inspect the file")
    return report


# ---- precision census --------------------------------------------------------------------------

# A dtype holding less than this share of the counted weights does not make a file "mixed":
# normalization constants and a float bias or two are not a precision choice.
NEGLIGIBLE_SHARE = 0.01
_LABEL_ORDER = ("int8", "fp16", "bf16", "fp32", "fp64")


def census_weights(census: dict[str, Any], executed: bool = False) -> dict[str, int]:
    """Weight counts by dtype: stored in the file, or (`executed`) as the runtime computes with them."""
    counts = (census.get("executed_weights_by_dtype") if executed else None) or census.get("weights_by_dtype") or {}
    normalized: dict[str, int] = {}
    for dtype, count in counts.items():
        key = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "qint8": "int8",
               "quint8": "int8", "uint8": "int8", "int32": "int8"}.get(dtype, dtype)
        normalized[key] = normalized.get(key, 0) + int(count)
    return normalized


def precision_label(census: dict[str, Any], executed: bool = False) -> str:
    """"fp32" | "fp16" | "int8" | "mixed(int8 x%, fp32 y%)", from counted weights only.

    By default: what the file stores. `executed=True`: how the runtime computes (when the format
    reports it, e.g. ONNX Runtime's optimized graph), which can differ: a QDQ conv left unfused
    runs in float, and fp16 weights run as fp32 on an x86 CPU.
    """
    counts = {k: v for k, v in census_weights(census, executed).items() if v > 0 and k in _LABEL_ORDER}
    total = sum(counts.values())
    if not total:
        return "unknown"
    shares = {k: v / total for k, v in counts.items()}
    significant = [k for k in _LABEL_ORDER if shares.get(k, 0.0) >= NEGLIGIBLE_SHARE]
    if len(significant) == 1:
        return significant[0]
    return "mixed(" + ", ".join(f"{k} {100 * shares[k]:.0f}%" for k in significant) + ")"
