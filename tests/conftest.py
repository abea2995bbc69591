"""Shared fixtures: tiny synthetic data and a tiny trained model, made once per test session."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

# Two cores here: keep torch from oversubscribing them when pytest runs alongside other work
# (EDGEKIT_TEST_THREADS=1 leaves a core to a long training run).
torch.set_num_threads(int(os.environ.get("EDGEKIT_TEST_THREADS", min(2, os.cpu_count() or 1))))

from edgekit.config import DataConfig, DataSource, TrainConfig  # noqa: E402
from edgekit.data import load_data  # noqa: E402
from edgekit.model import ModelSpec, build_model  # noqa: E402
from edgekit.report import Reporter  # noqa: E402
from edgekit.train import train_model  # noqa: E402

TINY_WIDTH = 0.125


@pytest.fixture(scope="session")
def tiny_data_config(tmp_path_factory) -> DataConfig:
    return DataConfig(source=DataSource.synthetic, synthetic_train=2000, synthetic_test=400, val_size=200,
                      cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_data(tiny_data_config):
    return load_data(tiny_data_config)


@pytest.fixture(scope="session")
def tiny_train_config() -> TrainConfig:
    # No Cutout: a 12-px hole can erase most of a synthetic shape, which is the whole label.
    return TrainConfig(epochs=3, batch_size=64, lr=0.1, width=TINY_WIDTH, warmup_epochs=0.5, cutout=0, threads=2)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, tiny_data, tiny_data_config, tiny_train_config):
    """A width-0.125 ResNet18 trained for a few seconds on synthetic data, saved with its manifest."""
    out = tmp_path_factory.mktemp("trained")
    model = build_model(ModelSpec.from_width(TINY_WIDTH, tiny_data.num_classes), seed=0)
    return train_model(model, tiny_data, tiny_train_config, out, data_config=tiny_data_config)


@pytest.fixture(scope="session")
def tiny_calibration(tmp_path_factory, tiny_data, tiny_data_config):
    """A 64-image calibration set of the synthetic data, saved once for every int8 test (read only)."""
    from edgekit.calibrate import make_calibration, save_calibration

    return save_calibration(make_calibration(tiny_data, tiny_data_config, size=64),
                            tmp_path_factory.mktemp("calibration") / "cal.json")


@pytest.fixture(scope="session")
def tiny_short(tmp_path_factory, tiny_data, tiny_data_config):
    """(data, calibration): the session's data with its first 500 training images only, and a
    64-image calibration set drawn from them (valid for the whole data too: the same images at the
    same indices). For QAT tests, which check what the fine-tune does to the int8 model (the
    freeze, a resume, the file written), not how much a fine-tune learns: a quarter of the
    images is a quarter of their time. Validation and test splits are whole."""
    from edgekit.calibrate import make_calibration, save_calibration

    short = dataclasses.replace(tiny_data, train_x=tiny_data.train_x[:500], train_y=tiny_data.train_y[:500])
    calibration = save_calibration(make_calibration(short, tiny_data_config, size=64),
                                   tmp_path_factory.mktemp("calibration-short") / "cal.json")
    return short, calibration


MOBILENET_WIDTH = 0.25


@pytest.fixture(scope="session")
def tiny_mobilenet_trained(tmp_path_factory, tiny_data, tiny_data_config, tiny_train_config):
    """A width-0.25 MobileNetV2 trained on the same synthetic data, saved with its manifest.

    MobileNetV2 learns more slowly than ResNet18 here: 3 epochs at batch 64 reached 62 % validation
    accuracy (2 epochs at lr 0.2: 20 %); 4 epochs at batch 32, lr 0.05 reach 90 % (77.5 % in a
    one-thread run: thread counts change float sums), in about 30 s on two idle cores, minutes on
    a busy one; confident enough that int8 renderings of it agree on over 90 % of images."""
    out = tmp_path_factory.mktemp("trained-mobilenet")
    model = build_model(ModelSpec.from_width(MOBILENET_WIDTH, tiny_data.num_classes, arch="mobilenet_v2"), seed=0)
    config = dataclasses.replace(tiny_train_config, epochs=4, batch_size=32, lr=0.05, width=MOBILENET_WIDTH)
    return train_model(model, tiny_data, config, out, data_config=tiny_data_config)


@pytest.fixture(scope="module")
def loose_int8_vs_int8_gate():
    """For the int8 test modules: two int8 renderings of a tiny model (torch's requantizing kernels,
    ORT's QLinearConv) disagree on a few of 200 images (up to 1.5 % on the tiny ResNet18, ~94 %
    accurate); on so few images the 0.5-point int8-vs-int8 tolerance is one or two images, so a flip
    or two the other way would fail it. The gate's mechanics are under test there, for the QDQ file
    quantize writes beside its output as for `edgekit export`; the tolerance itself belongs to the
    real model (benchmarks/results/export-cpu.md). Module scope, so module fixtures that quantize
    (request it by name) see it too."""
    from edgekit.formats import FORMATS

    tolerances = FORMATS["onnx"].tolerances
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setitem(tolerances, "int8", dataclasses.replace(tolerances["int8"], max_drop_vs_int8_source=5.0))
        yield


class StopAfterEpochs(Reporter):
    """Records what a run says, and stops it as Ctrl-C would when it reports its `stop_at`-th epoch
    (that epoch trained, its state not yet saved: what an interruption finds)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.epochs, self.lines = stop_at, 0, []

    def info(self, message: str) -> None:
        self.lines.append(message)
        if message.startswith("epoch "):
            self.epochs += 1
            if self.epochs == self.stop_at:
                raise KeyboardInterrupt
