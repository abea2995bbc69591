"""`edgekit eval`: any file edgekit writes, scored on its lineage's data; TTA beside the plain figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.config import CalibMethod, EvalConfig, QuantizeConfig, QuantMode, Split, Tta
from edgekit.data import to_unit_float
from edgekit.evaluate import evaluate_artifact, tta_views

cli = CliRunner()


@pytest.fixture(scope="module")
def int8_pair(tmp_path_factory, tiny_trained, tiny_data, tiny_calibration):
    """A static int8 .pt of the session's tiny model and the QDQ ONNX quantize writes beside it."""
    from edgekit.quantize import quantize_checkpoint

    folder = tmp_path_factory.mktemp("eval-int8")
    out = folder / "int8.pt"
    quantize_checkpoint(tiny_trained.checkpoint, QuantizeConfig(
        mode=QuantMode.static, method=CalibMethod.minmax, calibration=str(tiny_calibration), latency_runs=3, threads=1),
        out, data=tiny_data)
    return out, out.with_suffix(".qdq.onnx")


def test_tta_views_are_the_mirror_and_one_pixel_shifts_with_weights_summing_to_one():
    images = np.random.default_rng(0).random((2, 3, 6, 5), dtype=np.float32)
    for tta, count in ((Tta.none, 1), (Tta.flip, 2), (Tta.flip_translate, 6)):
        views = list(tta_views(images, tta))
        assert len(views) == count and abs(sum(w for w, _ in views) - 1) < 1e-12
        assert all(v.shape == images.shape for _, v in views)
    views = [v for _, v in tta_views(images, Tta.flip_translate)]
    np.testing.assert_array_equal(views[1], images[..., ::-1])
    # Shifted down-right by one: row r of the view is row r-1 of the image (row 0 reflects row 1).
    np.testing.assert_array_equal(views[2][:, :, 1:, 1:], images[:, :, :-1, :-1])
    np.testing.assert_array_equal(views[2][:, :, 0, 1:], images[:, :, 1, :-1])
    np.testing.assert_array_equal(views[4][:, :, :-1, :-1], images[:, :, 1:, 1:])
    np.testing.assert_array_equal(views[5], views[4][..., ::-1])


def test_eval_of_a_checkpoint_matches_the_model_and_its_recorded_figure(tiny_trained, tiny_data):
    result = evaluate_artifact(tiny_trained.checkpoint, EvalConfig(tta=Tta.flip))
    with torch.no_grad():
        images = to_unit_float(tiny_data.test_x)
        plain = tiny_trained.model.eval()(images)
        flipped = tiny_trained.model(images.flip(3))
    assert result.accuracy == pytest.approx((plain.argmax(1) == tiny_data.test_y).float().mean().item())
    assert result.accuracy == pytest.approx(tiny_trained.test_accuracy)
    assert result.recorded_accuracy == pytest.approx(tiny_trained.test_accuracy)
    tta_pred = ((plain + flipped) / 2).argmax(1)
    assert result.tta_accuracy == {"flip": pytest.approx((tta_pred == tiny_data.test_y).float().mean().item())}
    assert result.images == len(tiny_data.test_y)
    # flip-translate's views begin with flip's, so one pass gives both, equal to the separate runs.
    both = evaluate_artifact(tiny_trained.checkpoint, EvalConfig(tta=Tta.flip_translate))
    assert set(both.tta_accuracy) == {"flip", "flip-translate"} and both.accuracy == result.accuracy
    assert both.tta_accuracy["flip"] == pytest.approx(result.tta_accuracy["flip"])


def test_eval_scores_int8_files_edgekit_wrote(int8_pair, tiny_data):
    int8_pt, qdq_onnx = int8_pair
    for artifact, runner_prefix in ((int8_pt, "torch-int8"), (qdq_onnx, "onnxruntime")):
        result = evaluate_artifact(artifact, EvalConfig(split=Split.val))
        assert result.runner.startswith(runner_prefix) and result.images == len(tiny_data.val_y)
        assert result.accuracy > 0.3  # the tiny model learns the synthetic shapes; chance is 0.1
        assert result.tta_accuracy == {}


def test_cli_eval_reports_tta_beside_the_plain_accuracy(int8_pair):
    result = cli.invoke(app, ["eval", str(int8_pair[0]), "--tta", "flip-translate", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "TTA flip-translate (6 passes)" in result.output and "TTA flip (2 passes)" in result.output
    assert "not what a deployed file scores" in " ".join(result.output.split())
    assert "torch-int8" in result.output


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be"),
    (["--threads", "-1"], "--threads must be"),
    (["--tta", "rotate"], "rotate"),
])
def test_cli_eval_bad_options_are_one_line(tiny_trained, args, message):
    result = cli.invoke(app, ["eval", str(tiny_trained.checkpoint), *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_eval_refuses_a_file_it_cannot_read_in_one_line(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    result = cli.invoke(app, ["eval", str(junk)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_explain_refuses_an_export_naming_its_torch_ancestor_and_eval(int8_pair, tmp_path):
    int8_pt, qdq_onnx = int8_pair
    result = cli.invoke(app, ["explain", str(qdq_onnx), "--out", str(tmp_path / "e")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"edgekit explain {int8_pt.name}" in result.output.replace(str(int8_pt.parent) + "/", "")
    assert f"edgekit eval {qdq_onnx}" in result.output
    assert not (tmp_path / "e").exists()
