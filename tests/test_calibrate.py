"""Calibration sets: seeded, balanced, hashed, and refused when data or preprocessing differ."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.calibrate import (calibration_data_config, load_calibration, make_calibration, read_definition,
                               save_calibration)
from edgekit.config import DataConfig, DataSource
from edgekit.data import load_data
from edgekit.errors import CalibrationError, ConfigError
from edgekit.model import ModelSpec

CONFIG = DataConfig(source=DataSource.synthetic, synthetic_train=1200, synthetic_test=200, val_size=200)


@pytest.fixture(scope="module")
def data():
    return load_data(CONFIG)


def test_balanced_seeded_and_roundtrips(data, tmp_path):
    cal = make_calibration(data, CONFIG, size=128, seed=3)
    assert cal.images.shape == (128, 3, 32, 32) and cal.images.dtype == np.float32
    assert 0.0 <= cal.images.min() and cal.images.max() <= 1.0
    counts = np.bincount(cal.labels, minlength=10)
    assert counts.max() - counts.min() <= 1  # class-balanced
    assert make_calibration(data, CONFIG, size=128, seed=3).sha256 == cal.sha256
    assert make_calibration(data, CONFIG, size=128, seed=4).sha256 != cal.sha256
    path = save_calibration(cal, tmp_path / "c.json")
    assert (tmp_path / "c.json.manifest.json").exists()
    loaded = load_calibration(path, data, ModelSpec.from_width(0.125))
    np.testing.assert_array_equal(loaded.images, cal.images)
    np.testing.assert_array_equal(loaded.labels, cal.labels)
    assert loaded.sha256 == cal.sha256 and loaded.manifest_ref()["file_sha256"]
    # the recorded fields reproduce the split
    assert calibration_data_config(path) == CONFIG


def test_other_split_refused(data, tmp_path):
    path = save_calibration(make_calibration(data, CONFIG, size=64), tmp_path / "c.json")
    other = load_data(DataConfig(source=DataSource.synthetic, synthetic_train=1200, synthetic_test=200,
                                 val_size=200, seed=1))
    with pytest.raises(CalibrationError, match="other data|pixels hash"):
        load_calibration(path, other)
    # same source, other validation split: same fingerprint, different pixels at those indices
    resplit = load_data(DataConfig(source=DataSource.synthetic, synthetic_train=1200, synthetic_test=200,
                                   val_size=300))
    with pytest.raises(CalibrationError, match="pixels hash|outside") as info:
        load_calibration(path, resplit)
    assert "val_size=200" in info.value.hint


def test_edited_definition_and_other_model_refused(data, tmp_path):
    path = save_calibration(make_calibration(data, CONFIG, size=64), tmp_path / "c.json")
    definition = read_definition(path)
    definition["pixels_sha256"] = "0" * 64
    (tmp_path / "bad.json").write_text(json.dumps(definition))
    with pytest.raises(CalibrationError, match="pixels hash"):
        load_calibration(tmp_path / "bad.json", data)
    definition = read_definition(path)
    definition["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    (tmp_path / "pre.json").write_text(json.dumps(definition))
    with pytest.raises(CalibrationError, match="preprocessing"):
        load_calibration(tmp_path / "pre.json", data)
    other_norm = ModelSpec.from_width(0.125, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.raises(CalibrationError, match="mean"):
        load_calibration(path, data, other_norm)


def test_bad_input(data, tmp_path):
    with pytest.raises(ConfigError):
        make_calibration(data, CONFIG, size=0)
    with pytest.raises(ConfigError):
        make_calibration(data, CONFIG, size=10**6)
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(CalibrationError, match="as a calibration definition"):
        load_calibration(tmp_path / "x.json", data)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "missing.json", data)
