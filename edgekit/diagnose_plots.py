"""Figures for `edgekit diff` and `edgekit explain` (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .report import _pyplot, _save_figure


def _hwc(image: np.ndarray) -> np.ndarray:
    return np.clip(np.transpose(image, (1, 2, 0)), 0.0, 1.0)


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return max(1, math.ceil(count / columns)), columns


def plot_per_class(rows: Sequence[dict[str, Any]], path: Any, names: dict[str, str]) -> None:
    """Per-class accuracy of both models (bars) and the child's delta in points (right panel)."""
    plt = _pyplot()
    classes = [r["class"] for r in rows]
    x = np.arange(len(classes))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    left.bar(x - 0.2, [100 * r["parent_accuracy"] for r in rows], 0.4, label=f"parent {names['parent']}")
    left.bar(x + 0.2, [100 * r["child_accuracy"] for r in rows], 0.4, label=f"child {names['child']}")
    left.set_xticks(x, classes, rotation=45, ha="right"), left.set_ylabel("accuracy (%)")
    low = min([100 * min(r["parent_accuracy"], r["child_accuracy"]) for r in rows if r["images"]] or [0])
    left.set_ylim(max(0, low - 10), 100), left.legend(fontsize=7), left.grid(alpha=0.3, axis="y")
    deltas = [r["delta_points"] for r in rows]
    right.bar(x, deltas, color=["tab:red" if d < 0 else "tab:green" for d in deltas])
    right.axhline(0, color="black", lw=0.8)
    right.set_xticks(x, classes, rotation=45, ha="right"), right.set_ylabel("child - parent (points)")
    right.grid(alpha=0.3, axis="y")
    figure.suptitle("per-class accuracy")
    _save_figure(figure, path)


def image_grid(images: np.ndarray, titles: Sequence[str], path: Any, title: str, columns: int = 8) -> None:
    """Images [N,3,H,W] in [0,1] with a caption each; an empty set draws a one-line note."""
    plt = _pyplot()
    if len(images) == 0:
        figure, axis = plt.subplots(figsize=(6, 1))
        axis.axis("off"), axis.text(0.5, 0.5, title + ": none", ha="center", va="center")
        _save_figure(figure, path)
        return
    rows, columns = _grid(len(images), columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.95 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles):
        axis.imshow(_hwc(image), interpolation="nearest")
        axis.set_title(caption, fontsize=6)
    figure.suptitle(title, fontsize=9)
    _save_figure(figure, path)


def _overlay(axis: Any, image: np.ndarray, cam: np.ndarray) -> None:
    axis.imshow(_hwc(image), interpolation="nearest")
    axis.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")


def gradcam_overlays(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], path: Any, title: str,
                     columns: int = 4) -> None:
    """Pairs of (image, image + Grad-CAM) side by side."""
    plt = _pyplot()
    rows, columns = _grid(len(images), columns)
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(3.0 * columns, 1.75 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for k, (image, cam, caption) in enumerate(zip(images, maps, titles)):
        row, col = divmod(k, columns)
        axes[row, 2 * col].imshow(_hwc(image), interpolation="nearest")
        axes[row, 2 * col].set_title(caption, fontsize=6)
        _overlay(axes[row, 2 * col + 1], image, cam)
    figure.suptitle(title, fontsize=9)
    _save_figure(figure, path)


def gradcam_pairs(images: np.ndarray, parent_maps: np.ndarray, child_maps: np.ndarray, titles: Sequence[str],
                  path: Any, names: dict[str, str], columns: int = 3) -> None:
    """Per flipped image: the image, the parent's map, the child's map."""
    plt = _pyplot()
    rows, columns = _grid(len(images), columns)
    figure, axes = plt.subplots(rows, 3 * columns, figsize=(4.2 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for k, (image, a, b, caption) in enumerate(zip(images, parent_maps, child_maps, titles)):
        row, col = divmod(k, columns)
        axes[row, 3 * col].imshow(_hwc(image), interpolation="nearest")
        axes[row, 3 * col].set_title(caption, fontsize=6)
        _overlay(axes[row, 3 * col + 1], image, a)
        axes[row, 3 * col + 1].set_title("parent", fontsize=6)
        _overlay(axes[row, 3 * col + 2], image, b)
        axes[row, 3 * col + 2].set_title("child", fontsize=6)
    figure.suptitle(f"Grad-CAM on flipped images: parent {names['parent']} vs child {names['child']} "
                    "(each model's map for its own answer)", fontsize=9)
    _save_figure(figure, path)
