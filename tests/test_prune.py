"""Structured pruning: real Torch-Pruning runs on a tiny trained model, rebuilt without pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgekit.artifacts import read_manifest
from edgekit.config import Importance, PruneConfig
from edgekit.data import DataSplits
from edgekit.errors import CheckpointError, ConfigError
from edgekit.model import ModelSpec, build_model, count_macs, load_checkpoint
from edgekit.prune import prune_checkpoint


@pytest.fixture(scope="module")
def trained(tiny_trained, tiny_data):
    """The session's trained model; what is under test is pruning's mechanics (MACs, channel counts,
    rebuilds), which any trained model shows. Fine-tuning reads half the session's training images,
    as many as this module's own model once trained on."""
    half = DataSplits(tiny_data.train_x[:1000], tiny_data.train_y[:1000], tiny_data.val_x, tiny_data.val_y,
                      tiny_data.test_x, tiny_data.test_y, tiny_data.classes, tiny_data.source, tiny_data.fingerprint)
    return Path(tiny_trained.checkpoint), half


def test_structured_prune_rebuilds_identically_and_drops_macs(trained, tmp_path):
    source, data = trained
    out = tmp_path / "pruned.pt"
    config = PruneConfig(ratio=0.5, round_to=4, steps=2, finetune_epochs=1, latency_runs=10)
    result = prune_checkpoint(source, config, out, data=data)
    assert result.after["macs"] < 0.6 * result.before["macs"]
    assert result.after["params"] < result.before["params"]
    # Rebuilt from plain channel counts (weights_only load), same outputs as the pruned module
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec.is_pruned and checkpoint.spec == result.spec
    rebuilt = checkpoint.build()
    assert count_macs(rebuilt) == result.after["macs"]
    assert result.max_rebuild_diff == 0.0
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), load_checkpoint(out).build()(x))
    manifest = read_manifest(out)
    assert manifest["kind"] == "pruned" and manifest["parent"]["sha256"]
    assert len(manifest["extra"]["prune_history"]) == 2
    assert manifest["metrics"]["macs_reduction"] > 1.6
    assert checkpoint.extra["prune_history"][-1]["macs"] == result.after["macs"]


def test_target_macs_with_bn_scale_global(trained, tmp_path):
    source, data = trained
    base = count_macs(load_checkpoint(source).build())
    config = PruneConfig(ratio=None, target_macs=base // 2, importance=Importance.bn, global_pruning=True,
                         round_to=4, finetune_epochs=0, latency_runs=10)
    result = prune_checkpoint(source, config, tmp_path / "p.pt", data=data)
    assert result.after["macs"] <= base // 2
    assert load_checkpoint(tmp_path / "p.pt").spec.stage_channels[-1] % 4 == 0


def test_unstructured_reports_sparsity_not_speed(trained, tmp_path):
    source, data = trained
    result = prune_checkpoint(source, PruneConfig(ratio=0.6, unstructured=True, finetune_epochs=0, latency_runs=10),
                              tmp_path / "u.pt", data=data)
    assert result.after["sparsity"] >= 0.59
    assert result.after["macs"] == result.before["macs"]  # dense shape unchanged
    assert "no dense speed-up" in read_manifest(tmp_path / "u.pt")["extra"]["note"]


def test_bad_input(trained, tmp_path):
    source, data = trained
    with pytest.raises(ConfigError, match="ratio"):
        prune_checkpoint(source, PruneConfig(ratio=1.5), tmp_path / "x.pt", data=data)
    with pytest.raises(ConfigError, match="target-macs"):
        prune_checkpoint(source, PruneConfig(target_macs=10**12, latency_runs=5), tmp_path / "x.pt", data=data)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(3)}, junk)
    with pytest.raises(CheckpointError, match="no model shape"):
        prune_checkpoint(junk, PruneConfig(), tmp_path / "x.pt", data=data)
    assert not (tmp_path / "x.pt").exists()


def test_internal_inconsistencies_are_plain_exceptions_not_user_errors():
    # "Please report it" cases are bugs: a plain exception keeps its traceback at the CLI edge,
    # where an EdgekitError would be turned into one line and lose it.
    from torch import nn

    from edgekit.errors import EdgekitError
    from edgekit.prune import spec_of

    spec = ModelSpec.from_width(0.125)
    model = build_model(spec)
    model.conv1 = nn.Conv2d(3, spec.stage_channels[0] + 1, 3, padding=1, bias=False)
    with pytest.raises(RuntimeError, match="report") as raised:
        spec_of(model, spec)
    assert not isinstance(raised.value, EdgekitError)
