"""The control: a fine-tuned child's parent, fine-tuned the way the child was (real training steps)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from edgekit.artifacts import manifest_path, read_manifest, sha256_file
from edgekit.config import FinetuneConfig, PruneConfig, QuantizeConfig
from edgekit.data import DataSplits
from edgekit.errors import CheckpointError, ConfigError
from edgekit.finetune import control_checkpoint, control_mismatch, default_output, plan_of
from edgekit.model import load_checkpoint
from edgekit.prune import prune_checkpoint


@pytest.fixture(scope="module")
def parent_and_data(tiny_trained, tiny_data):
    small = DataSplits(tiny_data.train_x[:600], tiny_data.train_y[:600], tiny_data.val_x, tiny_data.val_y,
                       tiny_data.test_x, tiny_data.test_y, tiny_data.classes, tiny_data.source, tiny_data.fingerprint)
    return Path(tiny_trained.checkpoint), small


@pytest.fixture(scope="module")
def pruned_child(parent_and_data, tmp_path_factory):
    parent, data = parent_and_data
    out = tmp_path_factory.mktemp("child") / "pruned.pt"
    config = PruneConfig(ratio=0.5, round_to=4, steps=2, finetune_epochs=1, distill_alpha=0.5, latency_runs=5)
    prune_checkpoint(parent, config, out, data=data)
    return out, config


def test_qat_plan_splits_at_the_freeze_epoch():
    assert FinetuneConfig.of_qat(QuantizeConfig(qat_epochs=3, qat_freeze_epoch=1)).cycles == (1, 2)
    assert FinetuneConfig.of_qat(QuantizeConfig(qat_epochs=1, qat_freeze_epoch=1)).cycles == (1,)
    assert FinetuneConfig.of_qat(QuantizeConfig(qat_epochs=2, qat_freeze_epoch=5, qat_lr=0.003)).lr == 0.003


def test_control_fine_tunes_the_parent_with_the_childs_recipe(parent_and_data, pruned_child):
    parent, data = parent_and_data
    child, config = pruned_child
    result = control_checkpoint(child, data=data)

    assert result.checkpoint == default_output(child) and result.checkpoint.name == "pruned.control.pt"
    # The recipe read back from the child's manifest is the one prune ran: two steps of one epoch,
    # distilled, BN recalibrated after each.
    assert result.plan == FinetuneConfig.of_prune(config)
    assert result.plan.cycles == (1, 1) and result.plan.distill_alpha == 0.5 and result.plan.bn_batches > 0

    manifest = read_manifest(result.checkpoint)
    assert manifest["kind"] == "control" and manifest["parent"]["sha256"] == sha256_file(parent)
    assert manifest["extra"]["child"]["sha256"] == sha256_file(child)
    assert manifest["config"]["finetune"]["cycles"] == [1, 1]
    metrics = manifest["metrics"]
    child_metrics = read_manifest(child)["metrics"]
    assert metrics["child_test_accuracy"] == child_metrics["test_accuracy"]
    assert metrics["child_minus_control_test_pt"] == pytest.approx(
        100 * (child_metrics["test_accuracy"] - metrics["test_accuracy"]))
    assert metrics["test_accuracy"] > 0.3  # ten classes: chance is 0.1

    # The control has the parent's architecture and was trained: same shapes, moved weights.
    before, after = load_checkpoint(parent).build().state_dict(), load_checkpoint(result.checkpoint).build().state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_control_refuses_a_child_that_was_not_fine_tuned(parent_and_data, tmp_path):
    parent, data = parent_and_data
    child = tmp_path / "pruned-no-ft.pt"
    prune_checkpoint(parent, PruneConfig(ratio=0.25, round_to=4, finetune_epochs=0, latency_runs=5), child, data=data)
    with pytest.raises(ConfigError, match="was not fine-tuned"):
        plan_of(child, read_manifest(child))
    with pytest.raises(ConfigError, match="was not fine-tuned"):
        control_checkpoint(child, data=data)
    assert not default_output(child).exists()


def test_control_refuses_a_parent_that_changed(parent_and_data, pruned_child, tmp_path):
    parent, data = parent_and_data
    child, _ = pruned_child
    other = tmp_path / "other.pt"
    shutil.copy(parent, other)
    other.write_bytes(other.read_bytes() + b"\0")  # same model, not the same file
    with pytest.raises(CheckpointError, match="not the file .* was made from"):
        control_checkpoint(child, tmp_path / "c.pt", parent=other, data=data)

    moved = tmp_path / "moved.pt"
    shutil.copy(child, moved)
    manifest = json.loads(manifest_path(child).read_text())
    manifest["parent"]["path"] = str(tmp_path / "gone.pt")
    manifest_path(moved).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is missing"):
        control_checkpoint(moved, tmp_path / "c.pt", data=data)
    assert not (tmp_path / "c.pt").exists()


def test_one_control_serves_every_child_fine_tuned_alike(parent_and_data, pruned_child, tmp_path):
    """A control is the parent fine-tuned by the child's plan: a child pruned to another width with
    the same fine-tune can use it; one fine-tuned otherwise, or a file that is no control, cannot."""
    parent, data = parent_and_data
    child, config = pruned_child
    control = default_output(child)
    if not control.exists():
        control_checkpoint(child, data=data)
    other = tmp_path / "pruned-harder.pt"
    prune_checkpoint(parent, dataclasses.replace(config, ratio=0.3), other, data=data)
    assert sha256_file(other) != sha256_file(child)
    assert control_mismatch(control, other, plan_of(other, read_manifest(other))) is None
    slower = dataclasses.replace(plan_of(other, read_manifest(other)), lr=0.001)
    assert control_mismatch(control, other, slower) == f"{control.name} was fine-tuned differently (lr)"
    assert "is not a control" in control_mismatch(child, other, slower)


def test_a_control_made_before_a_plan_field_existed_still_serves(parent_and_data, pruned_child, tmp_path):
    """A plan field added to edgekit later is read at its default from an older control's manifest
    (as a resumed run reads its config), so an upgrade does not orphan a long fine-tune; the same
    field at another value is still a difference."""
    _, data = parent_and_data
    child, _ = pruned_child
    control = default_output(child)
    if not control.exists():
        control_checkpoint(child, data=data)
    plan = plan_of(child, read_manifest(child))
    assert plan.distill_temperature == FinetuneConfig().distill_temperature
    older = tmp_path / control.name
    shutil.copyfile(control, older)
    manifest = read_manifest(control)
    del manifest["config"]["finetune"]["distill_temperature"]
    manifest_path(older).write_text(json.dumps(manifest))
    assert control_mismatch(older, child, plan) is None
    hotter = dataclasses.replace(plan, distill_temperature=plan.distill_temperature * 2)
    assert control_mismatch(older, child, hotter) == f"{older.name} was fine-tuned differently (distill_temperature)"
