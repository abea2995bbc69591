"""`--tensorboard`: the trainer's scalars land in real event files, read back with tensorboard's own reader."""

from __future__ import annotations

import builtins

import pytest

from edgekit.config import TrainConfig
from edgekit.errors import DependencyError
from edgekit.model import ModelSpec, build_model
from edgekit.train import train_model


def test_train_writes_step_and_epoch_scalars(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from edgekit.data import DataSplits

    # 256 training images, batch 64: 4 steps per epoch, 2 epochs.
    small = DataSplits(tiny_data.train_x[:256], tiny_data.train_y[:256], tiny_data.val_x[:64], tiny_data.val_y[:64],
                       tiny_data.test_x[:64], tiny_data.test_y[:64], tiny_data.classes, "small", "-")
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, width=0.125, warmup_epochs=0.0, cutout=0, threads=1,
                         channels_last=False, tensorboard=str(tmp_path / "tb"))
    model = build_model(ModelSpec.from_width(0.125, tiny_data.num_classes), seed=0)
    result = train_model(model, small, config)
    # a second call with the same folder (a second fine-tune round) continues the same curves
    train_model(model, small, TrainConfig(**{**config.__dict__, "epochs": 1}))

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("step/loss", "step/accuracy", "step/lr", "step/images_per_s", "epoch/train_loss",
                "epoch/val_accuracy", "epoch/test_accuracy", "epoch/lr", "epoch/images_per_second"):
        assert tag in scalars, tag
    steps = events.Scalars("step/loss")
    assert [s.step for s in steps] == list(range(1, 13))
    assert [s.step for s in events.Scalars("epoch/val_accuracy")] == [1, 2, 3]
    assert events.Scalars("epoch/val_accuracy")[1].value == pytest.approx(result.history[1]["val_accuracy"])
    assert all(s.value > 0 for s in events.Scalars("step/images_per_s"))


def test_missing_tensorboard_is_one_clear_error(monkeypatch, tmp_path):
    from edgekit import tensorboard_log

    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    with pytest.raises(DependencyError) as error:
        tensorboard_log.TrainingLogger(tmp_path)
    assert "tensorboard" in error.value.message and "edgekit[tensorboard]" in error.value.hint


def test_a_run_without_the_field_still_resumes_and_hashes_alike():
    from edgekit.config import DataConfig, resume_mismatches
    from edgekit.artifacts import to_plain

    old = to_plain(TrainConfig())
    old.pop("tensorboard")
    new = to_plain(TrainConfig(tensorboard="/tmp/tb"))
    assert resume_mismatches(old, new, to_plain(TrainConfig())) == []
    assert TrainConfig(tensorboard="/tmp/tb").config_hash(DataConfig()) == TrainConfig().config_hash(DataConfig())
    # a resumed run may log somewhere else than the interrupted one
    assert resume_mismatches(to_plain(TrainConfig(tensorboard="/a")), to_plain(TrainConfig(tensorboard="/b")),
                             to_plain(TrainConfig())) == []
    # ...while a field that moves the weights still counts: the checks above are not blind to everything
    assert resume_mismatches(old, to_plain(TrainConfig(lr=0.01, tensorboard="/tmp/tb")), to_plain(TrainConfig())) \
        == ["lr"]
    assert TrainConfig(lr=0.01).config_hash(DataConfig()) != TrainConfig().config_hash(DataConfig())
