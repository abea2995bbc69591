import json

import pytest
import torch

from edgekit.artifacts import read_manifest, sha256_file
from edgekit.config import TrainConfig
from edgekit.errors import ConfigError
from edgekit.model import ModelSpec, build_model, load_checkpoint
from edgekit.report import Reporter
from edgekit.train import evaluate, train_model


def test_training_learns_the_synthetic_task_well_above_chance(tiny_trained, tiny_data):
    # 10 classes: chance is 10 %.
    assert tiny_trained.test_accuracy > 0.5
    assert tiny_trained.best_val_accuracy > 0.5
    assert len(tiny_trained.history) == 3
    assert {"train_loss", "val_accuracy", "test_accuracy", "images_per_second"} <= set(tiny_trained.history[0])


def test_training_writes_checkpoint_manifest_metrics_and_plots(tiny_trained, tiny_data):
    out = tiny_trained.checkpoint.parent
    for name in ("best.pt", "best.pt.manifest.json", "last.pt", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).exists(), name
    manifest = read_manifest(tiny_trained.checkpoint)
    assert manifest["sha256"] == sha256_file(tiny_trained.checkpoint)
    assert manifest["kind"] == "checkpoint" and manifest["seed"] == 0 and "torch" in manifest["versions"]
    assert manifest["metrics"]["test_accuracy"] == pytest.approx(tiny_trained.test_accuracy)
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["epoch"] == 3
    # The saved best checkpoint reproduces the recorded test accuracy.
    model = load_checkpoint(tiny_trained.checkpoint).build()
    assert evaluate(model, tiny_data.test_x, tiny_data.test_y)["accuracy"] == pytest.approx(tiny_trained.test_accuracy)


class Interrupted(Exception):
    pass


class InterruptBeforeEpoch(Reporter):
    """Stands in for Ctrl-C: the run dies as epoch `epoch` starts, after the previous one was saved."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def progress(self, description, total=None):
        if description.startswith(f"epoch {self.epoch}/"):
            raise Interrupted(description)
        return super().progress(description, total)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, tiny_data, tiny_data_config):
    config = TrainConfig(epochs=2, batch_size=128, lr=0.05, width=0.125, warmup_epochs=0.5, threads=1)
    spec = ModelSpec.from_width(0.125)

    torch.manual_seed(123)
    straight = train_model(build_model(spec), tiny_data, config, tmp_path / "straight", data_config=tiny_data_config)

    torch.manual_seed(123)
    with pytest.raises(Interrupted):
        train_model(build_model(spec), tiny_data, config, tmp_path / "interrupted", InterruptBeforeEpoch(2),
                    data_config=tiny_data_config)
    assert not (tmp_path / "interrupted" / "best.pt").exists()
    torch.manual_seed(999)  # resume must restore every RNG itself
    resumed = train_model(build_model(spec), tiny_data, config, tmp_path / "interrupted", resume=True,
                          data_config=tiny_data_config)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [h["val_accuracy"] for h in straight.history] == [h["val_accuracy"] for h in resumed.history]


def test_resume_with_another_config_is_refused(tmp_path, tiny_data, tiny_data_config):
    config = TrainConfig(epochs=1, batch_size=256, width=0.125, threads=1)
    train_model(build_model(ModelSpec.from_width(0.125)), tiny_data, config, tmp_path, data_config=tiny_data_config)
    other = TrainConfig(epochs=2, batch_size=256, lr=0.01, width=0.125, threads=1)
    with pytest.raises(ConfigError, match="different config"):
        train_model(build_model(ModelSpec.from_width(0.125)), tiny_data, other, tmp_path, resume=True,
                    data_config=tiny_data_config)


def test_fine_tune_manifest_records_its_parent_hash(tmp_path, tiny_trained, tiny_data, tiny_data_config):
    parent = tiny_trained.checkpoint
    model = load_checkpoint(parent).build()
    config = TrainConfig(epochs=1, batch_size=256, lr=0.01, width=0.125, threads=1)
    result = train_model(model, tiny_data, config, tmp_path, parent=parent, data_config=tiny_data_config)
    manifest = read_manifest(result.checkpoint)
    assert manifest["parent"] == {"path": str(parent), "sha256": sha256_file(parent)}


def test_distillation_alone_teaches_a_fresh_student_the_teachers_answers(tiny_trained, tiny_data):
    # alpha 1: the labels carry no weight, so whatever the student learns comes from the teacher's logits.
    from edgekit.train import distillation_loss

    teacher = tiny_trained.model
    student = build_model(ModelSpec.from_width(0.125, tiny_data.num_classes), seed=1)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, width=0.125, warmup_epochs=0.5, threads=2,
                         distill_alpha=1.0, channels_last=False, cutout=0)
    result = train_model(student, tiny_data, config, teacher=teacher)
    teacher_answers = evaluate(teacher, tiny_data.test_x, tiny_data.test_y)["predictions"]
    student_answers = evaluate(result.model, tiny_data.test_x, tiny_data.test_y)["predictions"]
    assert (teacher_answers == student_answers).float().mean().item() > 0.5  # chance agreement is ~10 %
    logits = torch.randn(8, 10)
    assert distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, torch.randn(8, 10), 4.0).item() > 0.0


def test_distillation_settings_are_checked(tiny_data):
    model = build_model(ModelSpec.from_width(0.125, tiny_data.num_classes), seed=0)
    with pytest.raises(ConfigError, match="distill"):
        train_model(model, tiny_data, TrainConfig(epochs=1, distill_alpha=1.5, cutout=0), teacher=model)


def test_resume_accepts_an_option_added_later_at_its_default_and_refuses_a_changed_one():
    from edgekit.artifacts import to_plain
    from edgekit.config import resume_mismatches

    defaults = to_plain(TrainConfig())
    recorded = dict(defaults)
    del recorded["warmup_start"]  # a run started before edgekit had this option
    recorded["threads"] = 2
    assert resume_mismatches(recorded, to_plain(TrainConfig(threads=1)), defaults) == []
    assert resume_mismatches(recorded, to_plain(TrainConfig(warmup_start=0.5)), defaults) == ["warmup_start"]
    assert resume_mismatches(recorded, to_plain(TrainConfig(epochs=81)), defaults) == ["epochs"]


def test_lr_schedule_is_the_published_triangle():
    from edgekit.config import Schedule
    from edgekit.train import lr_factor

    config = TrainConfig(epochs=10)
    warmup = config.warmup_steps(steps_per_epoch=100)  # 20 % of 1,000 steps
    assert warmup == 200
    factors = [lr_factor(step, 1000, warmup, Schedule.onecycle, config.warmup_start) for step in range(1000)]
    assert factors[0] == pytest.approx(0.2) and factors[100] == pytest.approx(0.6)
    assert factors[200] == pytest.approx(1.0) and factors[600] == pytest.approx(0.5)
    assert max(factors) == pytest.approx(1.0) and factors[-1] == pytest.approx(1 / 800)


def test_cutout_blanks_one_square_of_the_given_side_inside_every_image():
    from edgekit.data import augment

    images = torch.rand(64, 3, 32, 32) * 0.5 + 0.5  # never equal to the fill
    out = augment(images, torch.Generator().manual_seed(0), pad=0, flip=False, cutout=12, cutout_fill=(0.1, 0.2, 0.3))
    blank = (out == torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)).all(1)  # [N, 32, 32]
    assert (blank.flatten(1).sum(1) == 144).all()
    rows, cols = blank.any(2), blank.any(1)
    assert (rows.sum(1) == 12).all() and (cols.sum(1) == 12).all()  # one 12x12 square, not clipped at a border
