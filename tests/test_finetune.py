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
from edgekit.scratch import scratch_dir
from edgekit.model import load_checkpoint
from edgekit.prune import prune_checkpoint
from conftest import StopAfterEpochs


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


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_checkpoint(a).build().state_dict(), load_checkpoint(b).build().state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def uninterrupted_control(child: Path, data) -> Path:
    """The child's control made in one go (the module's earlier tests may have made it already)."""
    control = default_output(child)
    if not control.exists():
        control_checkpoint(child, data=data)
    return control


@pytest.fixture(scope="module")
def two_epoch_child(parent_and_data, tmp_path_factory):
    """A child fine-tuned in one cycle of two epochs, so its control can be stopped between them."""
    parent, data = parent_and_data
    out = tmp_path_factory.mktemp("child-2ep") / "pruned.pt"
    prune_checkpoint(parent, PruneConfig(ratio=0.5, round_to=4, finetune_epochs=2, latency_runs=5), out, data=data)
    return out


def test_an_interrupted_control_goes_on_from_its_last_epoch_to_the_same_weights(parent_and_data, two_epoch_child,
                                                                                tmp_path):
    _, data = parent_and_data
    whole = control_checkpoint(two_epoch_child, tmp_path / "whole.pt", data=data).checkpoint
    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        control_checkpoint(two_epoch_child, out, data=data, reporter=StopAfterEpochs(stop_at=2))
    assert not out.exists() and (scratch_dir(out) / "cycle0.last.pt").exists()
    again = StopAfterEpochs()
    control_checkpoint(two_epoch_child, out, data=data, reporter=again)
    assert any("resumed from" in line and "after epoch 1" in line for line in again.lines), again.lines
    assert again.epochs == 1  # only the epoch the interruption lost was trained again
    assert same_weights(out, whole)
    assert not scratch_dir(out).exists()  # written: nothing left to resume


def test_a_control_cut_between_cycles_keeps_the_finished_cycle(parent_and_data, pruned_child, tmp_path):
    _, data = parent_and_data
    child, _ = pruned_child  # two steps of one epoch: a control of two one-epoch cycles
    whole = uninterrupted_control(child, data)
    out = tmp_path / "cut.pt"
    with pytest.raises(KeyboardInterrupt):
        control_checkpoint(child, out, data=data, reporter=StopAfterEpochs(stop_at=2))
    assert (scratch_dir(out) / "cycle0.done.pt").exists()
    again = StopAfterEpochs()
    control_checkpoint(child, out, data=data, reporter=again)
    assert any("cycle 1/2 finished before an interruption" in line for line in again.lines), again.lines
    assert again.epochs == 1 and same_weights(out, whole)


def test_what_another_job_left_in_the_scratch_folder_is_not_continued(parent_and_data, two_epoch_child, pruned_child,
                                                                      tmp_path):
    """A fine-tune stopped for one child, then the same output asked of another child with another
    recipe: its epochs would train other weights, so they are discarded, not resumed."""
    _, data = parent_and_data
    out = tmp_path / "control.pt"
    with pytest.raises(KeyboardInterrupt):
        control_checkpoint(two_epoch_child, out, data=data, reporter=StopAfterEpochs(stop_at=2))
    other, _ = pruned_child
    again = StopAfterEpochs()
    control_checkpoint(other, out, data=data, reporter=again)
    assert any("interrupted fine-tune of another source or recipe" in line for line in again.lines)
    assert not any("resumed from" in line for line in again.lines) and again.epochs == 2
    assert same_weights(out, uninterrupted_control(other, data))


def test_an_interrupted_prune_goes_on_from_its_last_epoch_to_the_same_weights(parent_and_data, two_epoch_child,
                                                                              tmp_path):
    parent, data = parent_and_data
    config = PruneConfig(ratio=0.5, round_to=4, finetune_epochs=2, latency_runs=5)
    out = tmp_path / "pruned.pt"
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(parent, config, out, data=data, reporter=StopAfterEpochs(stop_at=2))
    assert not out.exists() and (scratch_dir(out) / "step1" / "cycle0.last.pt").exists()
    again = StopAfterEpochs()
    # another latency setting is not another fine-tune: the interrupted epochs still serve
    prune_checkpoint(parent, dataclasses.replace(config, latency_runs=7), out, data=data, reporter=again)
    assert any("resumed from" in line and "after epoch 1" in line for line in again.lines), again.lines
    assert again.epochs == 1 and same_weights(out, two_epoch_child)
    assert not scratch_dir(out).exists()
