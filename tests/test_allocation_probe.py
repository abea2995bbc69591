"""benchmarks/prune_allocation_probe.py: its allocations meet their MAC target and prune to exactly their widths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from edgekit.model import ModelSpec, build_model, count_macs
from edgekit.prune import rebuild, spec_of

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prune_allocation_probe.py"


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(SCRIPT.parent))  # as `python benchmarks/x.py` runs it: its own folder first
    try:
        spec = importlib.util.spec_from_file_location("benchmark_prune_allocation_probe", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_an_allocation_fills_its_mac_budget_in_its_shape(probe):
    base, target = ModelSpec(), 277_000_000
    tilted = probe.fit_allocation(base, probe.SPLITS["even"], 0.5, target, 8)
    macs = probe.spec_macs(tilted)
    assert 0.98 * target <= macs <= target  # grown back after rounding down, never past the target
    shares = [kept / full for kept, full in zip(tilted.stage_channels, base.stage_channels)]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]  # later stages lose more
    inner_only = probe.fit_allocation(base, probe.SPLITS["inner only"], 0.0, target, 8)
    assert inner_only.stage_channels == base.stage_channels and probe.spec_macs(inner_only) <= target
    # every inner width capped at 95 % and still too many MACs: refused, not returned over the target
    assert probe.fit_allocation(base, probe.SPLITS["inner only"], 1.0, target, 8) is None


def test_prune_to_spec_gives_exactly_the_allocated_widths(probe):
    base = ModelSpec.from_width(0.5)
    wanted = probe.fit_allocation(base, probe.SPLITS["residual x0.5"], 0.5, count_macs(build_model(base)) // 2, 8)
    pruned, diff = rebuild(probe.prune_to_spec(build_model(base, seed=0), wanted), base)
    assert spec_of(pruned, base) == wanted and diff <= 1e-5
    assert count_macs(pruned) == probe.spec_macs(wanted)
