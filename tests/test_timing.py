"""edgekit.timing: the one latency loop, its percentile rule and the batching helper."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.timing import (batch_slices, latency_stats, percentiles, predict_batched, time_calls,
                            time_interleaved)


def test_percentile_rule_is_linear_interpolation_between_ranks():
    stats = percentiles(np.arange(1, 101, dtype=float))  # 1..100 ms
    assert stats["p50"] == pytest.approx(50.5)  # the median of an even count: between 50 and 51
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5) and stats["min"] == 1.0 and stats["runs"] == 100
    assert stats["seconds"] == pytest.approx(5.05)
    with pytest.raises(ValueError):
        percentiles(np.array([]))


def test_bootstrap_interval_covers_the_true_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    small = latency_stats(rng.gamma(4.0, 0.5, size=100), seed=0)
    large = latency_stats(rng.gamma(4.0, 0.5, size=10_000), seed=0)
    assert large["ci95"][0] < 2.0 < large["ci95"][1]  # gamma(4, 0.5) has mean 2
    width = lambda s: s["ci95"][1] - s["ci95"][0]  # noqa: E731
    assert width(large) < width(small) / 5  # ~1/sqrt(n): 10x narrower for 100x the samples
    constant = latency_stats(np.full(50, 3.0))
    assert constant["ci95"] == [3.0, 3.0] and constant["std"] == 0.0
    samples = rng.gamma(4.0, 0.5, size=100)
    assert latency_stats(samples, seed=7) == latency_stats(samples, seed=7)  # seeded: the same interval


def test_time_calls_counts_warmup_apart_and_passes_the_call_index():
    seen = []
    samples = time_calls(seen.append, runs=5, warmup=3)
    assert len(samples) == 5 and (samples >= 0).all()
    assert seen == list(range(8))  # warm-up calls 0..2 untimed, then 3..7 timed


def test_time_interleaved_alternates_rounds():
    order = []
    samples = time_interleaved({"a": lambda i: order.append("a"), "b": lambda i: order.append("b")},
                               runs=6, rounds=3)
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6}
    assert order == ["a", "a", "b", "b"] * 3


def test_time_interleaved_spreads_min_seconds_over_the_rounds_and_reports_each_round():
    rounds_done = []
    samples = time_interleaved({"a": lambda i: None, "b": lambda i: None}, runs=2, rounds=4, min_seconds=0.2,
                               on_round=rounds_done.append)
    assert rounds_done == [1, 2, 3, 4]
    # each round holds every call for at least min_seconds / rounds of wall time, so an empty call
    # is repeated far past the 1 call per round that `runs` alone asks for
    assert all(len(times) > 2 * 4 for times in samples.values())


def test_batch_slices_and_predict_batched():
    assert [(s.start, s.stop) for s in batch_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.start, s.stop) for s in batch_slices(10, 4, drop_last=True)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError):
        list(batch_slices(3, 0))
    sizes = []
    images = np.arange(20, dtype=np.float32).reshape(10, 2)

    def predict(batch):
        sizes.append(len(batch))
        return batch * 2

    np.testing.assert_array_equal(predict_batched(predict, images, 4), images * 2)
    assert sizes == [4, 4, 2]


def test_the_batching_loop_has_one_home():
    """Every runner, reader and measurement batches through batch_slices / predict_batched: a
    stepped range elsewhere is a second batching loop (with its own short-last-batch rule)."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "edgekit"
    argument = r"(?:[^(),]|\([^()]*\))*"  # one argument, calls like len(x) inside it
    stepped = re.compile(rf"\brange\({argument},{argument},{argument}\)")  # range(start, stop, step)
    found = [f"{path.relative_to(package)}:{number}: {line.strip()}"
             for path in sorted(package.rglob("*.py")) if path.name != "timing.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if stepped.search(line)]
    assert not found, "batch with edgekit.timing.batch_slices or predict_batched instead:\n" + "\n".join(found)
    # the pattern sees what it looks for, and not a plain range or another function's arguments
    assert stepped.search("for start in range(0, len(x), 64):")
    assert not stepped.search("range(len(x))") and not stepped.search('check_range("lr", lr, 0, 10)')


def test_predict_batched_pads_a_fixed_batch_and_keeps_the_order():
    calls = []

    def fixed_four(chunk):
        calls.append(len(chunk))
        assert len(chunk) == 4  # a file with a static batch refuses anything else
        return chunk.sum(axis=1, keepdims=True)

    images = np.arange(30, dtype=np.float32).reshape(10, 3)
    out = predict_batched(fixed_four, images, 4, pad=True)
    assert calls == [4, 4, 4] and out.shape == (10, 1)
    assert np.array_equal(out[:, 0], images.sum(axis=1))
