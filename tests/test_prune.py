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


def _kept_shares(spec, base):
    return [kept / full for kept, full in zip(spec.stage_channels, base.stage_channels)]


def test_depth_tilt_prunes_later_stages_harder_at_the_same_mean_share(trained, tmp_path):
    source, data = trained
    base = load_checkpoint(source).spec
    flat = prune_checkpoint(source, PruneConfig(ratio=0.5, round_to=4, finetune_epochs=0, latency_runs=5),
                            tmp_path / "flat.pt", data=data)
    tilted = prune_checkpoint(source, PruneConfig(ratio=0.4, depth_tilt=1.0, round_to=4, finetune_epochs=0,
                                                  latency_runs=5), tmp_path / "tilted.pt", data=data)
    assert len(set(_kept_shares(flat.spec, base))) == 1  # uniform: every stage keeps half
    # tilt 1 over four stages of 8, 16, 32 and 64 channels: ratios 0, 0.27, 0.53 and 0.8, kept counts
    # rounded down to multiples of 4
    assert base.stage_channels == (8, 16, 32, 64)
    assert tilted.spec.stage_channels == (8, 8, 12, 12)
    assert tilted.spec.block_channels == (8, 8, 8, 8, 12, 12, 12, 12)
    assert tilted.max_rebuild_diff == 0.0 and load_checkpoint(tmp_path / "tilted.pt").spec == tilted.spec
    assert read_manifest(tmp_path / "tilted.pt")["config"]["prune"]["depth_tilt"] == 1.0


def test_depth_tilt_toward_a_mac_target_and_its_bad_input(trained, tmp_path):
    source, data = trained
    base_spec = load_checkpoint(source).spec
    base = count_macs(load_checkpoint(source).build())
    # round_to 1: at this width (8 to 64 channels) rounding to 4 would cut the first stage in half at its
    # first step and hide the tilt
    result = prune_checkpoint(source, PruneConfig(ratio=None, target_macs=base // 2, depth_tilt=0.5, round_to=1,
                                                  finetune_epochs=0, latency_runs=5), tmp_path / "t.pt", data=data)
    shares = _kept_shares(result.spec, base_spec)
    assert result.after["macs"] <= base // 2
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
    for flags, match in ((dict(global_pruning=True), "global pruning chooses"),
                         (dict(unstructured=True), "unstructured"),
                         (dict(depth_tilt=1.5), "--depth-tilt must be a finite number in \\[-1, 1\\]"),
                         (dict(depth_tilt=1.0), "lose 100% of its channels")):
        config = PruneConfig(ratio=0.5, **{"depth_tilt": 0.5, **flags})
        with pytest.raises(ConfigError, match=match):
            prune_checkpoint(source, config, tmp_path / "x.pt", data=data)
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


# ---- MobileNetV2 ------------------------------------------------------------------------------


def _blocks(model):
    return [block for stage in model.stages for block in stage]


@pytest.fixture(scope="module")
def mobilenet(tiny_mobilenet_trained, tiny_data):
    """The session's trained width-0.25 MobileNetV2 (conftest; pruning ranks channels by trained
    weights, BN scales or gradients: an untrained net's ties say little), with a 256-image training
    split to fine-tune on."""
    small = DataSplits(tiny_data.train_x[:256], tiny_data.train_y[:256], tiny_data.val_x[:100], tiny_data.val_y[:100],
                       tiny_data.test_x[:100], tiny_data.test_y[:100], tiny_data.classes, tiny_data.source,
                       tiny_data.fingerprint)
    return Path(tiny_mobilenet_trained.checkpoint), small


def test_mobilenet_v2_prunes_with_depthwise_groups_coupled_and_rebuilds_identically(mobilenet, tmp_path):
    source, data = mobilenet
    parent = load_checkpoint(source).build()
    out = tmp_path / "pruned.pt"
    config = PruneConfig(ratio=0.5, round_to=8, steps=1, finetune_epochs=1, batch_size=64, latency_runs=5)
    result = prune_checkpoint(source, config, out, data=data)
    assert result.after["macs"] < 0.6 * result.before["macs"]
    assert result.history[-1]["finetune_epochs"] == 1  # pruned, then fine-tuned by the trainer
    # the reloaded file (weights_only, no pickle) is the pruned network: same outputs, same MACs
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec == result.spec and checkpoint.spec.is_pruned and checkpoint.spec.arch == "mobilenet_v2"
    rebuilt = checkpoint.build()
    assert type(rebuilt).__name__ == "MobileNetV2" and count_macs(rebuilt) == result.after["macs"]
    assert result.max_rebuild_diff == 0.0
    # every block's depthwise conv still has one group per channel, the channels of its expand conv
    for block in _blocks(rebuilt):
        dw = block.conv2
        assert dw.groups == dw.in_channels == dw.out_channels
        assert dw.in_channels == (block.conv1.out_channels if block.expand else rebuilt.conv1.out_channels)
    assert all(c % 8 == 0 for c in (*checkpoint.spec.stage_channels, *checkpoint.spec.block_channels))  # round_to
    assert sum(checkpoint.spec.block_channels) < sum(parent.spec.block_channels)
    assert checkpoint.spec.stage_channels[-1] < parent.spec.stage_channels[-1]  # the 1x1 head shrank too
    # pruning keeps the parent's residual adds, even where a first block's two widths now meet
    assert [b.use_residual for b in _blocks(rebuilt)] == [b.use_residual for b in _blocks(parent)]
    # still trainable: a few steps on one batch lower its loss, and every weight gets a finite gradient
    rebuilt.train()
    x, y = data.train_x[:64].float() / 255, data.train_y[:64]
    optimizer = torch.optim.SGD(rebuilt.parameters(), lr=0.05)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(rebuilt(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rebuilt.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_mobilenet_v2_depth_tilt_keeps_more_of_the_stem_than_of_the_head(mobilenet, tmp_path):
    source, data = mobilenet
    base = load_checkpoint(source).spec
    result = prune_checkpoint(source, PruneConfig(ratio=0.4, depth_tilt=1.0, round_to=8, finetune_epochs=0,
                                                  latency_runs=5), tmp_path / "tilted.pt", data=data)
    shares = _kept_shares(result.spec, base)
    assert shares[0] == 1.0 and shares[-1] < 0.5  # the stem's share is 0 x the ratio, the head's 2 x
    assert result.max_rebuild_diff == 0.0


def test_mobilenet_v2_target_macs_global_bn_scale(mobilenet, tmp_path):
    source, data = mobilenet
    base = count_macs(load_checkpoint(source).build())
    config = PruneConfig(ratio=None, target_macs=base // 2, importance=Importance.bn, global_pruning=True,
                         round_to=8, finetune_epochs=0, batch_size=64, latency_runs=5)
    result = prune_checkpoint(source, config, tmp_path / "p.pt", data=data)
    assert result.after["macs"] <= base // 2 and result.max_rebuild_diff == 0.0
    rebuilt = load_checkpoint(tmp_path / "p.pt").build()
    assert count_macs(rebuilt) == result.after["macs"]
    assert all(b.conv2.groups == b.conv2.out_channels for b in _blocks(rebuilt))
    assert all(c % 8 == 0 for c in result.spec.block_channels)
