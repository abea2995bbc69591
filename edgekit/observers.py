"""Activation observers beside torch's own: a clipping range searched on the histogram.

Part of the int8 model code (with edgekit.qmodel): which range each activation's int8 grid spans
decides most of what static PTQ loses, and minmax spends the grid on rare outliers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class RangeSearchObserver(torch.ao.quantization.HistogramObserver):
    """HistogramObserver whose clipping range comes from `method`: percentile, entropy (KL) or mse."""

    def __init__(self, method: str = "mse", percentile: float = 99.99, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method = method
        self.percentile = percentile

    @torch.jit.ignore
    def calculate_qparams(self):  # type: ignore[override]
        if self.histogram.sum() == 0 or not torch.isfinite(self.min_val) or self.min_val == self.max_val:
            return super().calculate_qparams()
        lo, hi = self.search_range()
        return self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))

    def search_range(self) -> tuple[float, float]:
        hist = self.histogram.double().numpy()
        lo_v, hi_v = float(self.min_val), float(self.max_val)
        edges = np.linspace(lo_v, hi_v, len(hist) + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        if self.method == "percentile":
            cdf = np.cumsum(hist) / hist.sum()
            p = self.percentile / 100.0
            hi = float(edges[min(len(hist), np.searchsorted(cdf, p) + 1)])
            lo = lo_v if lo_v >= 0 else float(edges[np.searchsorted(cdf, 1 - p)])
            return min(lo, 0.0), max(hi, 1e-8)
        levels = int(self.quant_max - self.quant_min + 1)
        best, best_t = math.inf, 1.0
        for t in np.linspace(0.05, 1.0, 96):
            lo, hi = min(lo_v * t, 0.0), max(hi_v * t, 1e-8)
            err = self._kl(hist, edges, lo, hi, levels) if self.method == "entropy" else \
                self._mse(hist, centers, lo, hi, levels)
            if err < best:
                best, best_t = err, t
        return min(lo_v * best_t, 0.0), max(hi_v * best_t, 1e-8)

    @staticmethod
    def _mse(hist, centers, lo, hi, levels) -> float:
        scale = (hi - lo) / (levels - 1)
        zero = round(-lo / scale)
        q = np.clip(np.round(centers / scale) + zero, 0, levels - 1)
        return float(np.sum(hist * (centers - (q - zero) * scale) ** 2))

    @staticmethod
    def _kl(hist, edges, lo, hi, levels) -> float:
        a = max(0, int(np.searchsorted(edges, lo, side="right")) - 1)
        b = min(len(hist), int(np.searchsorted(edges, hi, side="left")))
        # Fewer bins than levels would quantize losslessly in this model and hide the clipping cost.
        if b - a < levels:
            return math.inf
        inside = hist[a:b]
        p = inside.copy()
        p[0] += hist[:a].sum()  # clipped mass lands on the edges, as the quantizer puts it there
        p[-1] += hist[b:].sum()
        # q: the in-range histogram alone, spread over `levels` buckets, as TensorRT's entropy
        # calibration does; p carries the clipped mass, so KL(p || q) charges for clipping.
        q = RangeSearchObserver._spread_over_buckets(inside, levels)
        p, q = p / p.sum(), q / max(q.sum(), 1e-12)
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))

    @staticmethod
    def _spread_over_buckets(inside, levels: int):
        """`inside` cut into `levels` buckets as np.array_split cuts it (the first len % levels one
        bin longer), each bucket's mass spread evenly over its non-empty bins. Summed at once, not
        bucket by bucket: it runs 96 times per activation. Needs len(inside) >= levels."""
        sizes = np.full(levels, len(inside) // levels)
        sizes[: len(inside) % levels] += 1
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # strictly increasing: every size >= 1
        nonzero = inside > 0
        mass = np.add.reduceat(inside, starts)
        filled = np.add.reduceat(nonzero.astype(np.int64), starts)
        return np.repeat(mass / np.maximum(filled, 1), sizes) * nonzero
