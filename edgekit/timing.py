"""The one latency loop and the one batching helper, shared by prune, quantize, bench and the probes.

Percentile rule, stated once for every figure edgekit reports: the p-th percentile of all timed
calls (warm-up calls excluded) by linear interpolation between the closest ranks (numpy's
default), so p50 is the median; the mean comes with a seeded bootstrap 95 % CI. Consecutive
calls are not independent (caches, frequency, neighbours on a shared machine), so the CI
describes this sample, not the machine.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import numpy as np


def batch_slices(total: int, size: int, drop_last: bool = False) -> Iterator[slice]:
    """slice(start, start + size) over `total` items; a short last batch unless `drop_last`."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    stop = total - total % size if drop_last else total
    for start in range(0, stop, size):
        yield slice(start, min(start + size, total))


def predict_batched(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, size: int,
                    pad: bool = False) -> np.ndarray:
    """float32 outputs of `predict` over `images`, `size` at a time, in order: the one batching
    loop of every runner and measurement. `pad`: `predict` takes exactly `size` rows (a file with a
    fixed batch), so a short last chunk is zero-padded and the padded rows' outputs dropped."""
    outputs = []
    for rows in batch_slices(len(images), size):
        chunk = images[rows]
        real = len(chunk)
        if pad and real < size:
            chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(predict(chunk), dtype=np.float32)[:real])
    return np.concatenate(outputs)


def time_calls(call: Callable[[int], Any], runs: int, warmup: int = 0, min_seconds: float = 0.0) -> np.ndarray:
    """Milliseconds per call of `call(i)`: `warmup` untimed calls, then timed calls until both `runs`
    calls and `min_seconds` have passed. `i` counts calls, so a caller can rotate its inputs."""
    for i in range(warmup):
        call(i)
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(samples) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter_ns()
        call(warmup + i)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
    return np.asarray(samples, dtype=np.float64)


def percentiles(samples_ms: np.ndarray) -> dict[str, Any]:
    """p50/p90/p99 (the rule in the module doc), mean, std, min, count and total seconds."""
    samples_ms = np.asarray(samples_ms, dtype=np.float64)
    if samples_ms.size == 0:
        raise ValueError("no timed calls")
    return {
        "p50": float(np.percentile(samples_ms, 50)),
        "p90": float(np.percentile(samples_ms, 90)),
        "p99": float(np.percentile(samples_ms, 99)),
        "mean": float(samples_ms.mean()),
        "std": float(samples_ms.std(ddof=1)) if len(samples_ms) > 1 else 0.0,
        "min": float(samples_ms.min()),
        "runs": int(len(samples_ms)),
        "seconds": float(samples_ms.sum() / 1e3),
    }


def latency_stats(samples_ms: np.ndarray, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """percentiles() plus the mean's seeded bootstrap 95 % confidence interval."""
    samples_ms = np.asarray(samples_ms, dtype=np.float64)
    stats = percentiles(samples_ms)
    rng = np.random.default_rng(seed)
    # Bootstrap in chunks so a 20k-sample run does not allocate 2000 x 20k at once.
    means = []
    for start in range(0, resamples, 250):
        idx = rng.integers(0, len(samples_ms), size=(min(250, resamples - start), len(samples_ms)))
        means.append(samples_ms[idx].mean(axis=1))
    means_all = np.concatenate(means)
    stats["ci95"] = [float(np.percentile(means_all, 2.5)), float(np.percentile(means_all, 97.5))]
    return stats


def time_interleaved(calls: dict[Any, Callable[[int], Any]], runs: int, warmup: int = 0,
                     rounds: int = 10, min_seconds: float = 0.0,
                     on_round: Callable[[int], None] | None = None) -> dict[Any, np.ndarray]:
    """time_calls for several callables in alternating rounds (at least `runs` timed calls and
    `min_seconds` each in all, split evenly over the rounds), so drift on a shared machine (other
    processes, clocks, caches) lands on all of them alike. `on_round(r)` after each round r (1-based)."""
    for call in calls.values():
        for i in range(warmup):
            call(i)
    per_round = max(1, -(-runs // rounds))
    samples: dict[Any, list[np.ndarray]] = {key: [] for key in calls}
    for round_number in range(1, rounds + 1):
        for key, call in calls.items():
            samples[key].append(time_calls(call, per_round, min_seconds=min_seconds / rounds))
        if on_round is not None:
            on_round(round_number)
    return {key: np.concatenate(parts) for key, parts in samples.items()}
