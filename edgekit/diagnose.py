"""Look inside: what compression changed, image by image (`edgekit diff`), and where a model looks
(`edgekit explain`).

`diff` runs two artifacts of any runnable format through the format table's runners on the same
split and reports agreement, the flips in both directions with an exact McNemar test (a real drop
or noise?), per-class accuracy, a grid of the flipped images and, when both are torch-runnable,
Grad-CAM of both side by side and how far the maps moved on a fixed seeded sample. `explain`
draws Grad-CAM overlays and the most confident mistakes of one model. Data and runners come the
way `edgekit bench` gets them: the data config recorded in the artifact's lineage, the runner from
the format table. Figures live in `diagnose_plots.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .artifacts import Manifest, atomic_write_text, parent_ref, to_plain, write_report_manifests
from .config import DataConfig, DiagnoseOptions
from .errors import ConfigError
from .formats import check_artifact, load_artifact_runner, predict_all
from .flips import Comparison, diff_summary_line, mcnemar_exact, softmax, top1_accuracy  # noqa: F401 (re-exported)
from .report import Reporter, markdown_table, quiet

DIFF_FORMAT = "edgekit-diff/1"


# ---- data and runners: the way bench gets them -------------------------------------------------


def load_split(artifact: Path, split: str, data: DataConfig | None = None, limit: int | None = None,
               reporter: Reporter = quiet):
    """(DataSplits, float images [N,3,H,W] in [0,1], labels, data config) of the artifact's lineage."""
    from .data import load_data, to_unit_float
    from .lineage import data_config_of, lineage

    if split not in ("test", "val"):
        raise ConfigError(f"unknown split '{split}'", "use --split test or --split val")
    config = DataConfig(**asdict(data)) if data is not None else data_config_of(lineage(Path(artifact)))
    if limit:
        config.test_limit = limit
    splits = load_data(config, reporter)
    pixels, labels = (splits.test_x, splits.test_y) if split == "test" else (splits.val_x, splits.val_y)
    images, labels = to_unit_float(pixels).numpy(), labels.numpy()
    if split == "val" and limit:
        images, labels = images[:limit], labels[:limit]
    return splits, images, labels, config


def _check_before_work(options: DiagnoseOptions, artifacts: tuple[Path, ...], out: Path, data: DataConfig | None,
                       layer: str | None) -> None:
    """Every option and input refused in one line before the data is decoded and the models run."""
    from .artifacts import check_writable_dir
    from .gradcam import resolve_layer, torch_model_for

    options.validate()
    if data is not None:
        data.validate()
    for artifact in artifacts:  # a damaged file is named now, not after the data and the other model
        check_artifact(artifact)
    check_writable_dir(out, create=False)
    if layer is not None:  # diff: only torch models have layers; a bad name fails here, not after the predictions
        for artifact in artifacts:
            model, _ = torch_model_for(artifact)
            if model is not None:
                resolve_layer(model, layer)


def predict(artifact: Path, images: np.ndarray, threads: int | None = None, batch: int = 256) -> np.ndarray:
    return predict_all(load_artifact_runner(artifact, threads), images, batch)[0]


def _explain_instead(artifact: Path) -> str:
    """The command that would work: explain the nearest torch file up the lineage; eval scores this one."""
    from .gradcam import torch_model_for
    from .lineage import lineage

    ancestor = next((p for p in lineage(artifact).chain[1:] if torch_model_for(p)[0] is not None), None)
    explain = (f"`edgekit explain {ancestor}` (the torch file it came from)" if ancestor is not None
               else "pass a torch checkpoint (fp32, pruned, or static/QAT int8 .pt)")
    return f"{explain}; `edgekit eval {artifact}` scores this file itself"


# ---- edgekit diff ------------------------------------------------------------------------------


@dataclass
class DiffResult:
    summary: dict[str, Any]
    per_class: list[dict[str, Any]]
    flips: dict[str, list[dict[str, Any]]]
    gradcam: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)


def _flip_records(comparison: Comparison, indices: np.ndarray) -> list[dict[str, Any]]:
    parent_p, child_p = softmax(comparison.parent_logits), softmax(comparison.child_logits)
    records = []
    for i in indices:
        records.append({"index": int(i), "true": comparison.classes[comparison.labels[i]],
                        "parent": comparison.classes[comparison.parent_pred[i]],
                        "parent_confidence": float(parent_p[i].max()),
                        "child": comparison.classes[comparison.child_pred[i]],
                        "child_confidence": float(child_p[i].max())})
    return records


def _default_layers(parent: str, child: str) -> str:
    """How diff.json names the layers used when --layer is not given: each model's own default."""
    return f"{parent} (default)" if parent == child else f"{parent} / {child} (parent / child defaults)"


def _gradcam_comparison(parent: Path, child: Path, images: np.ndarray, comparison: Comparison, flipped: np.ndarray,
                        sample: int, seed: int, layer: str | None, show: int) -> tuple[dict[str, Any], dict | None]:
    """Grad-CAM of both models: maps on the shown flipped images and map correlation on a seeded sample."""
    from .gradcam import gradcam, layer_name, map_correlation, torch_model_for

    parent_model, parent_kind = torch_model_for(parent)
    child_model, child_kind = torch_model_for(child)
    if parent_model is None or child_model is None:
        return {"available": False, "why": parent_kind if parent_model is None else child_kind}, None
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=min(sample, len(images)), replace=False))
    # The same question of both maps: where is the evidence for the true class?
    targets = comparison.labels[chosen]
    a = gradcam(parent_model, images[chosen], targets, layer, upsample=False)
    b = gradcam(child_model, images[chosen], targets, layer, upsample=False)
    correlation = map_correlation(a, b)
    finite = correlation[np.isfinite(correlation)]
    quartiles = np.percentile(finite, [25, 50, 75]) if len(finite) else [math.nan] * 3
    info = {"available": True, "parent_model": parent_kind, "child_model": child_kind,
            "layer": layer or _default_layers(layer_name(parent_model, None), layer_name(child_model, None)),
            "sample_images": int(len(chosen)), "sample_seed": seed,
            "target": "the true class", "correlation_median": float(quartiles[1]),
            "correlation_q25": float(quartiles[0]), "correlation_q75": float(quartiles[2]),
            "correlation_iqr": float(quartiles[2] - quartiles[0]),
            "undefined_maps": int(len(correlation) - len(finite))}
    shown = flipped[:show]
    overlays = None
    if len(shown):
        # Each model's map for its own answer: what it looked at when the two disagreed.
        overlays = {"indices": shown,
                    "parent": gradcam(parent_model, images[shown], comparison.parent_pred[shown], layer),
                    "child": gradcam(child_model, images[shown], comparison.child_pred[shown], layer)}
    return info, overlays


def diff(parent: Path, child: Path, out: Path, split: str = "test", data: DataConfig | None = None,
         limit: int | None = None, threads: int | None = None, seed: int = DiagnoseOptions.seed,
         gradcam_sample: int = DiagnoseOptions.gradcam_sample,
         layer: str | None = None, max_flips: int = 48, max_overlays: int = 12,
         reporter: Reporter = quiet) -> DiffResult:
    """Compare `child` with `parent` image by image; write diff.{json,md} and PNGs (with manifests) in `out`."""
    from . import diagnose_plots as plots

    parent, child, out = Path(parent), Path(child), Path(out)
    _check_before_work(DiagnoseOptions(limit=limit, threads=threads, seed=seed, gradcam_sample=gradcam_sample),
                       (parent, child), out, data, layer)
    splits, images, labels, data_config = load_split(parent, split, data, limit, reporter)
    reporter.info(f"diff: {len(labels)} {split} images of {splits.source}")
    comparison = Comparison(labels, predict(parent, images, threads), predict(child, images, threads),
                            list(splits.classes))
    summary = comparison.summary()
    per_class = comparison.per_class()
    lost, gained = comparison.flips()
    # The most confident wrong answers first: those are the surprising ones.
    confidence = softmax(comparison.child_logits).max(1)
    lost = lost[np.argsort(-confidence[lost], kind="stable")]
    gained = gained[np.argsort(-softmax(comparison.parent_logits).max(1)[gained], kind="stable")]
    flips = {"parent_right_child_wrong": _flip_records(comparison, lost),
             "parent_wrong_child_right": _flip_records(comparison, gained)}
    flipped = np.concatenate([lost, gained])
    cam_info, overlays = _gradcam_comparison(parent, child, images, comparison, flipped, gradcam_sample, seed,
                                             layer, max_overlays)

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "diff.json", "md": out / "diff.md", "per_class": out / "per-class.png",
             "flips": out / "flips.png"}
    names = {"parent": parent.name, "child": child.name}
    plots.plot_per_class(per_class, paths["per_class"], names)
    shown = flipped[:max_flips]
    plots.image_grid(images[shown], [_grid_title(comparison, i, names) for i in shown], paths["flips"],
                     title=f"flipped images ({len(lost)} right -> wrong first, then {len(gained)} wrong -> right)"
                     + (f"; first {len(shown)} shown" if len(flipped) > len(shown) else ""))
    if overlays is not None:
        paths["gradcam"] = out / "gradcam.png"
        plots.gradcam_pairs(images[overlays["indices"]], overlays["parent"], overlays["child"],
                            [_grid_title(comparison, i, names) for i in overlays["indices"]], paths["gradcam"], names)
    result = DiffResult(summary, per_class, flips, cam_info)
    payload = {"format": DIFF_FORMAT, "parent": str(parent), "child": str(child), "split": split,
               "data": splits.describe() | {"config": to_plain(data_config)}, "summary": summary,
               "per_class": per_class, "flips": flips, "gradcam": cam_info}
    atomic_write_text(paths["json"], json.dumps(to_plain(payload), indent=2) + "\n")
    atomic_write_text(paths["md"], diff_markdown(payload, {k: p.name for k, p in paths.items()}))
    config = {"parent": str(parent), "child": str(child), "split": split, "limit": limit, "seed": seed,
              "gradcam_sample": gradcam_sample, "layer": layer}
    write_report_manifests(paths, Manifest(kind="diff", format="json", precision="n/a", parent=parent_ref(parent),
                                           config=config, seed=seed, metrics=summary,
                                           extra={"child": parent_ref(child), "data": splits.describe()}))
    result.outputs = paths
    reporter.table(f"diff {parent.name} -> {child.name}", ["", ""], _summary_rows(summary, cam_info))
    reporter.info("diff: wrote " + ", ".join(str(p) for p in paths.values()))
    return result


def _grid_title(comparison: Comparison, i: int, names: dict[str, str]) -> str:
    parent_p, child_p = softmax(comparison.parent_logits[i:i + 1])[0], softmax(comparison.child_logits[i:i + 1])[0]
    c = comparison.classes
    return (f"#{i} true {c[comparison.labels[i]]}\nP {c[comparison.parent_pred[i]]} {parent_p.max():.2f}"
            f"\nC {c[comparison.child_pred[i]]} {child_p.max():.2f}")


def _summary_rows(summary: dict[str, Any], cam: dict[str, Any]) -> list[list[Any]]:
    rows = [["images", summary["images"]], ["top-1 agreement", f"{summary['top1_agreement']:.2%}"],
            ["parent accuracy", f"{summary['parent_accuracy']:.2%}"],
            ["child accuracy", f"{summary['child_accuracy']:.2%}"],
            ["parent right -> child wrong", summary["parent_right_child_wrong"]],
            ["parent wrong -> child right", summary["parent_wrong_child_right"]],
            *([["accuracy C - P (standard error)",
                f"{summary['difference_pt']:+.2f} pt ({summary['difference_standard_error_pt']:.2f} pt)"]]
              if "difference_standard_error_pt" in summary else []),  # absent from reports made before it was kept
            ["McNemar exact p", f"{summary['mcnemar_p']:.3g}"]]
    if cam.get("available"):
        rows.append(["Grad-CAM correlation (median, IQR)",
                     f"{cam['correlation_median']:.4f} ({cam['correlation_q25']:.4f}-{cam['correlation_q75']:.4f}) "
                     f"on {cam['sample_images']} images"])
    else:
        rows.append(["Grad-CAM", f"not drawn: {cam.get('why')}"])
    return rows


def diff_markdown(payload: dict[str, Any], files: dict[str, str]) -> str:
    summary, cam = payload["summary"], payload["gradcam"]
    parent, child = Path(payload["parent"]).name, Path(payload["child"]).name
    p = summary["mcnemar_p"]
    verdict = ("no image changed its correctness" if summary["parent_right_child_wrong"] + summary["parent_wrong_child_right"] == 0
               else "a difference this size is unlikely to be noise at the 5 % level" if p < 0.05
               else "a difference this size could well be noise at the 5 % level")
    lines = [f"# edgekit diff: {parent} (parent, P) -> {child} (child, C)", "",
             f"{summary['images']} {payload['split']} images of {payload['data']['source']}.", "",
             markdown_table(["", ""], _summary_rows(summary, cam)), "",
             f"McNemar's exact test looks only at the images whose correctness changed; {verdict} "
             f"(p = {p:.3g}).", "",
             "## Per class", "", f"![per-class accuracy]({files['per_class']})", "",
             markdown_table(["class", "images", "P accuracy", "C accuracy", "delta (pt)", "lost", "gained"],
                            [[r["class"], r["images"], f"{r['parent_accuracy']:.2%}", f"{r['child_accuracy']:.2%}",
                              f"{r['delta_points']:+.2f}", r["lost"], r["gained"]] for r in payload["per_class"]]),
             "", "## Flipped images", "", f"![flipped images]({files['flips']})", ""]
    for key, title in (("parent_right_child_wrong", "parent right, child wrong"),
                       ("parent_wrong_child_right", "parent wrong, child right")):
        records = payload["flips"][key]
        lines.append(f"- {title}: {len(records)}" + (": " + ", ".join(
            f"#{r['index']} {r['true']} -> {r['child' if key.endswith('wrong') else 'parent']}"
            for r in records[:10]) + (" ..." if len(records) > 10 else "") if records else ""))
    lines.append("")
    if cam.get("available"):
        lines += ["## Grad-CAM", "",
                  f"Layer {cam['layer']}; parent: {cam['parent_model']}, child: {cam['child_model']}. "
                  f"How far the maps moved: Pearson correlation of the two models' maps for the true class on "
                  f"{cam['sample_images']} seeded images (seed {cam['sample_seed']}, layer resolution): median "
                  f"{cam['correlation_median']:.4f}, quartiles {cam['correlation_q25']:.4f} / "
                  f"{cam['correlation_q75']:.4f}" + (f"; {cam['undefined_maps']} pairs had a blank map" if cam["undefined_maps"] else "")
                  + ". 1 = the same map."
                  + (" An int8 model's map is its dequantized twin's (int8 weights, float activations): it shows "
                     "what weight rounding moved, not activation rounding." if "twin" in cam["child_model"] else ""), ""]
        if "gradcam" in files:
            lines += ["Flipped images, each model's map for its own answer:", "", f"![Grad-CAM]({files['gradcam']})", ""]
    else:
        lines += ["## Grad-CAM", "", f"Not drawn: {cam.get('why')}.", ""]
    return "\n".join(lines)


# ---- edgekit explain ---------------------------------------------------------------------------


def explain(checkpoint: Path, out: Path, images_count: int = DiagnoseOptions.images, indices: Sequence[int] | None = None,
            layer: str | None = None, split: str = "test", data: DataConfig | None = None, limit: int | None = None,
            seed: int = DiagnoseOptions.seed, max_mistakes: int = 32, reporter: Reporter = quiet) -> dict[str, Any]:
    """Grad-CAM overlays of chosen (or seeded random) images and the most confident mistakes."""
    from . import diagnose_plots as plots
    from .gradcam import gradcam, layer_name, torch_model_for

    checkpoint, out = Path(checkpoint), Path(out)
    _check_before_work(DiagnoseOptions(limit=limit, seed=seed, images=images_count, indices=tuple(indices or ())),
                       (checkpoint,), out, data, None)
    model, kind = torch_model_for(checkpoint)
    if model is None:
        raise ConfigError(f"cannot explain {checkpoint.name}: {kind}", _explain_instead(checkpoint))
    cam_layer = layer_name(model, layer)  # a bad --layer fails before any data is loaded
    splits, images, labels, _ = load_split(checkpoint, split, data, limit, reporter)
    classes = list(splits.classes)
    if indices:
        bad = [i for i in indices if not 0 <= i < len(labels)]
        if bad:
            raise ConfigError(f"--index {bad} outside the {split} split (0..{len(labels) - 1})", "pick valid indices")
        chosen = np.asarray(indices, dtype=np.int64)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(len(labels), size=min(images_count, len(labels)),
                                                            replace=False))
    from .formats.torch import TorchRunner

    logits = predict_all(TorchRunner(model), images, 256)[0]
    probabilities = softmax(logits)
    predicted = logits.argmax(1)
    maps = gradcam(model, images[chosen], predicted[chosen], cam_layer)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong].max(1), kind="stable")]

    def title(i: int) -> str:
        return f"#{i} true {classes[labels[i]]}\npred {classes[predicted[i]]} {probabilities[i].max():.2f}"

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "explain.json", "md": out / "explain.md", "gradcam": out / "gradcam.png",
             "mistakes": out / "misclassified.png"}
    plots.gradcam_overlays(images[chosen], maps, [title(i) for i in chosen], paths["gradcam"],
                           title=f"Grad-CAM of {checkpoint.name} ({cam_layer}), map for the predicted class")
    shown = wrong[:max_mistakes]
    plots.image_grid(images[shown], [title(i) for i in shown], paths["mistakes"],
                     title=f"most confident mistakes ({len(wrong)} of {len(labels)} {split} images wrong; "
                           f"{len(shown)} shown)")
    accuracy = top1_accuracy(logits, labels)
    payload = {"checkpoint": str(checkpoint), "model": kind, "layer": cam_layer, "split": split,
               "data": splits.describe(), "accuracy": accuracy, "images": [
                   {"index": int(i), "true": classes[labels[i]], "predicted": classes[predicted[i]],
                    "confidence": float(probabilities[i].max())} for i in chosen],
               "mistakes": [{"index": int(i), "true": classes[labels[i]], "predicted": classes[predicted[i]],
                             "confidence": float(probabilities[i].max())} for i in wrong[:max_mistakes]],
               "mistakes_total": int(len(wrong))}
    atomic_write_text(paths["json"], json.dumps(to_plain(payload), indent=2) + "\n")
    atomic_write_text(paths["md"], "\n".join([
        f"# edgekit explain: {checkpoint.name}", "",
        f"{kind}; {len(labels)} {split} images of {splits.source}; accuracy {accuracy:.2%}.", "",
        f"Grad-CAM ({payload['layer']}), the map for the predicted class on {len(chosen)} images:", "",
        f"![Grad-CAM]({paths['gradcam'].name})", "",
        f"The most confident mistakes first ({len(wrong)} wrong in all):", "",
        f"![misclassified]({paths['mistakes'].name})", ""]))
    config = {"checkpoint": str(checkpoint), "layer": layer, "indices": [int(i) for i in chosen], "split": split,
              "seed": seed}
    metrics = {"accuracy": accuracy, "mistakes": int(len(wrong))}
    write_report_manifests(paths, Manifest(kind="explain", format="json", precision="n/a",
                                           parent=parent_ref(checkpoint), config=config, seed=seed, metrics=metrics))
    reporter.info("explain: wrote " + ", ".join(str(p) for p in paths.values()))
    return payload | {"outputs": paths}
