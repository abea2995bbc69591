"""The CLI end to end through typer's CliRunner: real commands on real files."""

import pytest
from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-train")
    result = invoke("train", "--source", "synthetic", "--width", "0.125", "--epochs", "1", "--batch-size", "128",
                    "--val-size", "100", "--train-per-class", "60", "--threads", "2", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_train_eval_info(trained_dir):
    assert (trained_dir / "best.pt.manifest.json").exists()
    result = invoke("eval", trained_dir / "best.pt")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "recorded test accuracy" in result.output
    result = invoke("info", trained_dir / "best.pt")
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "MACs" in result.output and "parent" in result.output


def _table_rows(output: str) -> dict[str, str]:
    """First line of each row of a two-column rich table: {label: value}."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def test_doctor_reports_this_machine_as_torch_and_the_format_table_see_it():
    import torch

    from edgekit.formats import FORMATS

    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    rows = _table_rows(result.output)
    assert rows["torch"] == torch.__version__
    # no GPU, or a GPU named: whichever torch sees, not a fixed string
    assert rows["cuda"].startswith("no GPU") is (not torch.cuda.is_available()), rows["cuda"]
    for name, fmt in FORMATS.items():
        # a format doctor calls available must be one its own check finds runnable, and the reverse
        reason, shown = fmt.unavailable_reason(), rows[f"format {name}"]
        expected = "available" if reason is None else f"unavailable: {reason}"
        assert shown and expected.startswith(shown), (name, shown)  # rich wraps a long reason onto more lines


def test_every_command_has_help_with_an_example_of_itself_using_its_own_options():
    import typer

    commands = typer.main.get_command(app).commands
    assert {"train", "export", "bench", "diff"} <= set(commands)  # every command, not a hand-kept list
    for name, command in commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0 and "Example" in result.output, name
        examples = [line.split("Example:", 1)[1].split() for line in (command.help or "").splitlines()
                    if "Example:" in line]
        assert examples and all(words[:2] == ["edgekit", name] for words in examples), (name, examples)
        # an example flag the command does not know would fail for whoever copies it
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        unknown = [word for words in examples for word in words if word.startswith("-") and word not in known]
        assert unknown == [], (name, unknown)


@pytest.mark.parametrize("args, message", [
    (["train", "--source", "folder", "--data-dir", "/nonexistent/cifar"], "data directory not found"),
    (["train", "--source", "folder"], "needs a directory"),
    (["eval", "/nonexistent/best.pt"], "artifact not found"),
    (["info", "/nonexistent/best.pt"], "artifact not found"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(args, message):
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_corrupt_checkpoint_is_refused(tmp_path, trained_dir):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((trained_dir / "best.pt").read_bytes()[:1000])
    result = invoke("eval", corrupt)
    assert result.exit_code == 1 and "corrupt" in result.output and "Traceback" not in result.output


def test_unknown_option_and_choice_are_refused():
    assert invoke("train", "--no-such-option").exit_code == 2
    result = invoke("train", "--optimizer", "adagrad")
    assert result.exit_code == 2 and "adagrad" in result.output


def test_info_and_export_source_read_an_int8_artifact(trained_dir, tmp_path):
    # `info` and `export --source` used to call load_checkpoint, which refuses every int8 file.
    from edgekit.config import QuantizeConfig, QuantMode
    from edgekit.quantize import quantize_checkpoint

    from edgekit.calibrate import make_calibration, save_calibration
    from edgekit.config import data_config_from_dict
    from edgekit.data import load_data
    from edgekit.model import load_checkpoint

    cal = tmp_path / "cal.json"
    config = data_config_from_dict(load_checkpoint(trained_dir / "best.pt").extra["data_config"])
    save_calibration(make_calibration(load_data(config), config, size=32), cal)
    int8 = tmp_path / "int8.pt"
    quantize_checkpoint(trained_dir / "best.pt", QuantizeConfig(mode=QuantMode.static, method="minmax",
                                                                calibration=str(cal), latency_runs=2,
                                                                export_onnx=False), int8)
    result = invoke("info", int8)
    assert result.exit_code == 0, result.output
    assert "MACs" in result.output and "int8 model" in result.output and "yes" in result.output
    result = invoke("export", int8, "--target", "onnx", "--precision", "fp32", "--source", "synthetic")
    # past the data options (which used to fail on the int8 file), to export's own refusal of fp32
    assert result.exit_code == 1 and "int8 model" in result.output, result.output
    assert "Traceback" not in result.output
