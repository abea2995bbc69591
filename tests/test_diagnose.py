"""`edgekit diff` / `explain` and Grad-CAM, on tiny real models and real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgekit.artifacts import Manifest, manifest_path, write_manifest
from edgekit.cli import app
from edgekit.diagnose import diff, diff_summary_line, mcnemar_exact
from edgekit.errors import ConfigError
from edgekit.gradcam import gradcam, map_correlation, spatial_layers
from edgekit.model import load_checkpoint, save_checkpoint


def test_mcnemar_exact_matches_the_binomial_tail():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # C(12,0)+C(12,1)+C(12,2)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)
    large = mcnemar_exact(5000, 4000)  # 2**9000 would overflow a float; exact ints do not
    assert 0.0 <= large < 1e-20 and math.isfinite(large)
    assert mcnemar_exact(3000, 2950) > 0.5


def test_paired_difference_has_the_standard_error_of_the_per_image_differences():
    from edgekit.flips import paired_difference

    # diff-w1-winner's counts: 5,000 test images, 108 lost and 114 gained by the child
    parent = np.zeros(5000, bool)
    child = np.zeros(5000, bool)
    parent[:4000] = child[:4000] = True  # right in both
    parent[4000:4108] = True  # lost
    child[4108:4222] = True  # gained
    paired = paired_difference(parent, child)
    assert (paired["images"], paired["lost"], paired["gained"]) == (5000, 108, 114)
    assert paired["difference_pt"] == pytest.approx(100 * 6 / 5000)
    # variance of d in {-1, 0, 1}: (222 - 6**2 / 5000) / 4999; SE = sqrt(var / n)
    assert paired["standard_error_pt"] == pytest.approx(100 * math.sqrt((222 - 36 / 5000) / 4999 / 5000))
    assert 0.29 < paired["standard_error_pt"] < 0.31
    assert paired["mcnemar_p"] == mcnemar_exact(108, 114)
    agreeing = paired_difference(parent, parent)  # the same answers: no difference, none to resolve
    assert agreeing["difference_pt"] == 0 and agreeing["standard_error_pt"] == 0 and agreeing["mcnemar_p"] == 1.0
    with pytest.raises(ValueError):
        paired_difference(parent, child[:10])


def test_diff_summary_line_names_the_class_that_flipped_most():
    labels = np.array([0, 0, 0, 1, 1, 2])
    parent = np.array([0, 0, 0, 1, 0, 2])
    child = np.array([1, 1, 0, 1, 1, 2])
    line = diff_summary_line(parent, child, labels, ["cat", "dog", "ship"])
    assert (line["flipped"], line["lost"], line["gained"]) == (3, 2, 1)
    assert line["top_class"] == {"class": "cat", "count": 2}
    assert "3 images flipped" in line["text"] and "2 of them cat" in line["text"]


@pytest.fixture(scope="module")
def checkpoint(tiny_trained):
    return tiny_trained.checkpoint


@pytest.fixture(scope="module")
def damaged(checkpoint, tmp_path_factory):
    """The tiny model with one layer's weights zeroed (the first conv of stage 3)."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.build()
    with torch.no_grad():
        model.layer3[0].conv1.weight.zero_()
    path = tmp_path_factory.mktemp("damaged") / "damaged.pt"
    save_checkpoint(path, model, loaded.classes, loaded.extra)
    write_manifest(path, Manifest(kind="checkpoint", format="torch", precision="fp32",
                                  parent={"path": str(checkpoint), "sha256": ""}))
    return path


def test_diff_of_a_file_against_itself_is_empty(checkpoint, tmp_path):
    result = diff(checkpoint, checkpoint, tmp_path, gradcam_sample=32)
    summary = result.summary
    assert summary["top1_agreement"] == 1.0
    assert summary["parent_right_child_wrong"] == summary["parent_wrong_child_right"] == 0
    assert summary["mcnemar_p"] == 1.0
    assert all(row["delta_points"] == 0 for row in result.per_class)
    assert result.gradcam["available"] and result.gradcam["correlation_median"] == pytest.approx(1.0)
    for name in ("diff.json", "diff.md", "per-class.png", "flips.png"):
        assert (tmp_path / name).stat().st_size > 0 and manifest_path(tmp_path / name).exists(), name
    assert not (tmp_path / "gradcam.png").exists()  # no flipped image to draw
    assert json.loads((tmp_path / "diff.json").read_text())["summary"]["mcnemar_p"] == 1.0


def test_a_damaged_child_shows_flips_and_a_small_p_value(checkpoint, damaged, tmp_path):
    result = diff(checkpoint, damaged, tmp_path, gradcam_sample=32)
    summary = result.summary
    lost, gained = summary["parent_right_child_wrong"], summary["parent_wrong_child_right"]
    assert lost > gained and lost >= 20
    assert summary["child_accuracy"] < summary["parent_accuracy"] - 0.05
    assert summary["mcnemar_p"] < 1e-4
    drop = summary["difference_pt"]
    assert drop == pytest.approx(100 * (summary["child_accuracy"] - summary["parent_accuracy"]))
    assert drop < -2 * summary["difference_standard_error_pt"] < 0  # resolved: more than two SE below zero
    assert f"| accuracy C - P (standard error) | {drop:+.2f} pt ({summary['difference_standard_error_pt']:.2f} pt) |" \
        in (tmp_path / "diff.md").read_text()
    assert sum(row["lost"] for row in result.per_class) == lost
    assert len(result.flips["parent_right_child_wrong"]) == lost
    first = result.flips["parent_right_child_wrong"][0]
    assert first["true"] == first["parent"] != first["child"]
    assert result.gradcam["correlation_median"] < 0.999  # the maps moved
    assert (tmp_path / "gradcam.png").stat().st_size > 0 and manifest_path(tmp_path / "gradcam.png").exists()
    text = (tmp_path / "diff.md").read_text()
    assert "McNemar" in text and "unlikely to be noise" in text


def test_diff_runs_an_onnx_child_through_its_runner(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgekit.config import ExportOptions
    from edgekit.export import export_artifact

    onnx_file = export_artifact(checkpoint, "onnx", "fp32", tmp_path / "m.onnx",
                                ExportOptions(parity_images=32, dynamic_batch=True)).path
    result = diff(checkpoint, onnx_file, tmp_path / "diff", gradcam_sample=8)
    assert result.summary["top1_agreement"] >= 0.99
    assert not result.gradcam["available"] and "torch" in result.gradcam["why"]


# ---- Grad-CAM on cases where the answer is known ------------------------------------------------


class _RedDetector(nn.Module):
    """Hand-set: one conv channel fires on red pixels; class 0's score is its mean, class 1 the negative."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU())
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(1, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _quadrant_mass(maps: np.ndarray, quadrants: np.ndarray) -> np.ndarray:
    h = maps.shape[1] // 2
    masses = []
    for cam, q in zip(maps, quadrants):
        r, c = divmod(int(q), 2)
        masses.append(cam[r * h:(r + 1) * h, c * h:(c + 1) * h].sum() / max(cam.sum(), 1e-12))
    return np.array(masses)


def test_gradcam_of_a_hand_set_model_lands_on_the_red_square():
    images = np.full((4, 3, 32, 32), 0.5, np.float32)
    for q in range(4):
        r, c = divmod(q, 2)
        images[q, :, r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12] = np.array([1.0, 0.0, 0.0])[:, None, None]
    maps = gradcam(_RedDetector(), images, np.zeros(4, np.int64), layer="features")
    assert maps.shape == (4, 32, 32) and maps.max() == pytest.approx(1.0)
    assert (_quadrant_mass(maps, np.arange(4)) > 0.99).all()


def test_gradcam_of_a_trained_resnet_follows_the_evidence_quadrant(tiny_data):
    """A tiny ResNet18 learns stripes' orientation from a patch in a random quadrant of a flat grey image;
    its map for the true class must put most of its mass in that quadrant."""
    from edgekit.config import TrainConfig
    from edgekit.data import DataSplits
    from edgekit.model import ModelSpec, build_model
    from edgekit.train import train_model

    def make(n, seed):
        g = np.random.default_rng(seed)
        labels, quadrants = g.integers(0, 2, n), g.integers(0, 4, n)
        images = np.clip(0.5 + 0.03 * g.standard_normal((n, 3, 32, 32)), 0, 1)
        stripes = (np.arange(12) % 4 < 2).astype(np.float64)
        for i, (label, q) in enumerate(zip(labels, quadrants)):
            r, c = divmod(int(q), 2)
            patch = np.tile(stripes[:, None], (1, 12)) if label else np.tile(stripes[None, :], (12, 1))
            images[i, :, r * 16 + 2:r * 16 + 14, c * 16 + 2:c * 16 + 14] = patch
        return torch.from_numpy((images * 255).round().astype(np.uint8)), torch.from_numpy(labels), quadrants

    train_x, train_y, _ = make(768, 1)
    test_x, test_y, test_q = make(64, 2)
    data = DataSplits(train_x, train_y, test_x, test_y, test_x, test_y, ["vertical", "horizontal"], "quadrants", "-")
    model = build_model(ModelSpec.from_width(0.125, 2), seed=0)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, width=0.125, warmup_epochs=0.2, cutout=0, threads=1,
                         channels_last=False)
    result = train_model(model, data, config)
    assert result.test_accuracy > 0.95
    images = test_x.float().numpy() / 255
    maps = gradcam(result.model, images, test_y.numpy(), layer="layer3")
    mass = _quadrant_mass(maps, test_q)
    assert np.median(mass) > 0.6 and (mass > 0.25).mean() > 0.9  # chance is 0.25


def test_map_correlation_and_layer_names():
    a = np.random.default_rng(0).random((3, 4, 4))
    assert map_correlation(a, a) == pytest.approx(np.ones(3))
    assert map_correlation(a, 1 - a) == pytest.approx(-np.ones(3))
    assert np.isnan(map_correlation(a, np.zeros_like(a))).all()
    from edgekit.model import ModelSpec, build_model

    names = spatial_layers(build_model(ModelSpec.from_width(0.125)))
    assert "layer4" in names and "layer3.1.conv2" in names and "fc" not in names and "avgpool" in names


# ---- the CLI -------------------------------------------------------------------------------------

cli = CliRunner()


def test_cli_diff_and_explain_write_their_files(checkpoint, damaged, tmp_path):
    result = cli.invoke(app, ["diff", str(checkpoint), str(damaged), "--out", str(tmp_path / "d"),
                              "--gradcam-sample", "16", "--limit", "200"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "d" / "diff.json").read_text())["summary"]
    assert summary["images"] == 200 and summary["parent_right_child_wrong"] > 0
    assert (tmp_path / "d" / "gradcam.png").exists()

    result = cli.invoke(app, ["explain", str(checkpoint), "--images", "6", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "e" / "explain.json").read_text())
    assert len(payload["images"]) == 6
    confidences = [m["confidence"] for m in payload["mistakes"]]
    assert confidences == sorted(confidences, reverse=True) and all(m["true"] != m["predicted"] for m in payload["mistakes"])
    for name in ("explain.json", "explain.md", "gradcam.png", "misclassified.png"):
        assert (tmp_path / "e" / name).stat().st_size > 0 and manifest_path(tmp_path / "e" / name).exists()

    result = cli.invoke(app, ["explain", str(checkpoint), "--index", "0,5", "--layer", "layer2.1.conv1",
                              "--out", str(tmp_path / "e2")])
    assert result.exit_code == 0, result.output
    assert [i["index"] for i in json.loads((tmp_path / "e2" / "explain.json").read_text())["images"]] == [0, 5]


def test_cli_explain_refuses_an_unknown_layer_listing_valid_ones(checkpoint, tmp_path):
    result = cli.invoke(app, ["explain", str(checkpoint), "--layer", "layer9", "--out", str(tmp_path)])
    assert result.exit_code == ConfigError.exit_code
    assert "layer9" in result.output and "layer4" in result.output and "layer3.1.conv2" in result.output
    assert "Traceback" not in result.output
    result = cli.invoke(app, ["explain", str(checkpoint), "--index", "0,99999", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "outside" in result.output


def test_bench_diff_hook_counts_the_flips_against_the_root(checkpoint, damaged, tmp_path):
    from edgekit.bench import bench
    from edgekit.config import BenchConfig

    config = BenchConfig(threads=1, batches=(1,), warmup=1, runs=2, min_seconds=0.0, sweep_seconds=0.0,
                         test_limit=100, eval_batch=50, diff=True)
    run = bench([checkpoint, damaged], config, out=tmp_path / "b")
    rows = {r.artifact.split("/")[-1]: r for r in run.rows}
    assert rows["best.pt"].diff_root is None  # the root is not compared with itself
    assert "diff_root" not in rows["best.pt"].to_json()
    expected = diff(checkpoint, damaged, tmp_path / "d", limit=100, gradcam_sample=4).summary
    line = rows["damaged.pt"].diff_root
    assert (line["lost"], line["gained"]) == (expected["parent_right_child_wrong"], expected["parent_wrong_child_right"])
    assert f"{line['flipped']} images flipped" in run.outputs["md"].read_text()


# ---- MobileNetV2 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_checkpoint(tiny_data, tiny_data_config, tmp_path_factory):
    """A width-0.25 MobileNetV2 checkpoint (BN statistics from a few training-mode passes) that records
    the session's data config, as a trained one would."""
    from edgekit.artifacts import to_plain
    from edgekit.model import ModelSpec, build_model

    model = build_model(ModelSpec.from_width(0.25, tiny_data.num_classes, arch="mobilenet_v2"), seed=0).train()
    with torch.no_grad():
        for start in range(0, 256, 64):
            model(tiny_data.train_x[start:start + 64].float() / 255)
    return save_checkpoint(tmp_path_factory.mktemp("mobilenet") / "mobilenet.pt", model.eval(), tiny_data.classes,
                           {"data_config": to_plain(tiny_data_config)})


def test_gradcam_of_a_mobilenet_v2_uses_its_own_default_layer(mobilenet_checkpoint, tiny_data, tmp_path):
    from edgekit.diagnose import explain
    from edgekit.gradcam import layer_name, torch_model_for

    model, _ = torch_model_for(mobilenet_checkpoint)
    # the head's ReLU6: the last rectified map, 4x4, which the classifier averages (layer4 is a stage
    # in the middle of MobileNetV2, 8x8)
    assert layer_name(model, None) == "relu2"
    images = tiny_data.test_x[:4].float().div(255).numpy()
    targets = np.arange(4)
    coarse = gradcam(model, images, targets, upsample=False)
    assert coarse.shape == (4, 4, 4) and coarse.max() == pytest.approx(1.0)
    maps = gradcam(model, images, targets)
    assert maps.shape == (4, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    # a layer followed by an in-place ReLU6 reads the map before the clip, not after it
    before_clip = gradcam(model, images, targets, layer="layer3.0.bn1", upsample=False)
    reference = _gradcam_without_inplace(model, images, targets, "layer3.0.bn1")
    np.testing.assert_allclose(before_clip, reference, atol=1e-6)

    payload = explain(mobilenet_checkpoint, tmp_path / "e", images_count=3, limit=40)
    assert payload["layer"] == "relu2" and len(payload["images"]) == 3
    assert "Grad-CAM (relu2)" in (tmp_path / "e" / "explain.md").read_text()


def _gradcam_without_inplace(model, images, targets, layer):
    """Grad-CAM written out by hand on a copy whose activations are not in place."""
    import copy

    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    captured = {}
    clone.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    logits = clone(torch.as_tensor(images))
    activation = captured["a"]
    grad, = torch.autograd.grad(logits.gather(1, torch.as_tensor(targets)[:, None]).sum(), activation)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1)).detach()
    return (cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)).numpy()
