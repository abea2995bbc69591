"""The activation range search behind static PTQ (percentile, entropy/KL, MSE) on known histograms."""

from __future__ import annotations

import pytest
import torch

from edgekit.observers import RangeSearchObserver


def observed(method: str, values: torch.Tensor, **kwargs) -> RangeSearchObserver:
    observer = RangeSearchObserver(method=method, dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                   reduce_range=True, **kwargs)
    observer(values)
    return observer


@pytest.fixture(scope="module")
def with_outlier() -> torch.Tensor:
    # a ReLU-like activation: half-normal bulk in [0, ~4], plus one value far out at 100
    bulk = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).abs()
    return torch.cat([bulk, torch.tensor([100.0])])


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_percentile_and_entropy_clip_a_lone_outlier(method, with_outlier):
    lo, hi = observed(method, with_outlier).search_range()
    assert lo == 0.0  # non-negative data: the range starts at zero
    assert 2.0 < hi < 20.0, (method, hi)  # far below the 100 outlier, yet above the bulk's typical values


def test_mse_picks_the_range_with_the_least_squared_error(with_outlier):
    # Squared error weighs the lone outlier's clipping heavily, so MSE clips less than the others
    # (here about halfway); what it must do is beat both the full range and the percentile's range.
    import numpy as np

    observer = observed("mse", with_outlier)
    lo, hi = observer.search_range()
    hist = observer.histogram.double().numpy()
    edges = np.linspace(float(observer.min_val), float(observer.max_val), len(hist) + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    levels = int(observer.quant_max - observer.quant_min + 1)

    def error(top: float) -> float:
        return observer._mse(hist, centers, 0.0, top, levels)

    _, tight = observed("percentile", with_outlier).search_range()
    assert lo == 0.0 and hi < 100.0
    assert error(hi) < error(100.0) and error(hi) < error(tight)


def test_percentile_is_the_requested_quantile():
    uniform = torch.linspace(0.0, 1.0, 100_001)
    _, hi = observed("percentile", uniform, percentile=90.0).search_range()
    assert hi == pytest.approx(0.9, abs=0.01)


def test_mse_keeps_the_full_range_when_nothing_is_an_outlier():
    uniform = torch.linspace(0.0, 1.0, 100_001)
    _, hi = observed("mse", uniform).search_range()
    assert hi == pytest.approx(1.0, abs=0.03)  # clipping a uniform tail only adds error


def test_qparams_follow_the_searched_range(with_outlier):
    observer = observed("mse", with_outlier)
    lo, hi = observer.search_range()
    scale, zero = observer.calculate_qparams()
    levels = observer.quant_max - observer.quant_min  # 127 steps with reduce_range
    assert float(scale) == pytest.approx((hi - lo) / levels, rel=1e-3)
    assert int(zero) == 0


def _spread_bucket_by_bucket(inside, levels):
    """How the entropy search first spread each bucket's mass, one bucket at a time: the oracle for
    the vectorized RangeSearchObserver._spread_over_buckets."""
    import numpy as np

    q = np.zeros_like(inside)
    for chunk in np.array_split(np.arange(len(inside)), levels):
        mass, nonzero = inside[chunk].sum(), (inside[chunk] > 0)
        if nonzero.any():
            q[chunk[nonzero]] = mass / nonzero.sum()
    return q


@pytest.mark.parametrize("levels", [128, 256])
def test_the_vectorized_bucket_spread_is_the_bucket_by_bucket_one(with_outlier, levels):
    import numpy as np

    sparse = torch.cat([torch.rand(5_000, generator=torch.Generator().manual_seed(1)) * 3, torch.tensor([40.0])])
    for values in (with_outlier, sparse):  # a dense histogram, and one with empty bins among full ones
        hist = observed("entropy", values).histogram.double().numpy()
        assert (hist == 0).any() or values is with_outlier
        # every in-range slice length the search can cut (uneven bucket sizes included), from either end
        for length in range(levels, len(hist) + 1, 7):
            for inside in (hist[:length], hist[len(hist) - length:]):
                np.testing.assert_allclose(RangeSearchObserver._spread_over_buckets(inside, levels),
                                           _spread_bucket_by_bucket(inside, levels), rtol=1e-12, atol=0)
