"""Every CLI option, read from the typer app, given bad values: one line, a non-zero exit, no traceback.

The options are not listed here: they are read from the app, so an option added tomorrow is swept
with the bad values of its type the day it lands. What the test keeps by hand is only what the
app cannot say: which numeric options accept 0 or negative values, which paths are written rather
than read, which option needs a companion to mean anything, and the bad values of the few
free-text options.

No case may reach real work: `edgekit.data.load_data` is replaced by a stand-in that fails
loudly, so a bad value that passes validation fails the test with "reached the data" instead of
training for minutes; every refusal must come before the data is decoded, and must name the
option (or the bad path) it refuses.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import edgekit.data
from edgekit.cli import app
from edgekit.errors import DataError

runner = CliRunner()
GROUP = typer.main.get_command(app)
REACHED = "the sweep reached the data"

# Numeric options for which 0 is a meaningful value (every other one must refuse 0).
ZERO_OK = {"seed", "data_seed", "cutout", "swa_start", "label_smoothing", "finetune_epochs", "distill", "keep_float",
           "qat_epochs", "warmup", "min_seconds", "sweep_seconds"}
# Numeric options whose range runs through 0 to negative values (-1 and 0 are meaningful there).
SIGNED = {"depth_tilt"}
# Path options that name something to be written (or a folder to write into), not a file to read.
OUTPUTS = {"out", "bundle", "tensorboard", "baseline_dir"}
# Path options that name a folder to read.
INPUT_DIRS = {"data_dir", "directory"}
# Options that only matter beside another one: the companion is added to the command line.
COMPANIONS = {"data_dir": ["--source", "folder"], "baseline_dir": ["--baselines"], "calibration@bench": ["--baselines"]}
# Free-text options: their bad values.
TEXT = {"batches": ["", "0", "-1", "a,b", "1,nan"], "index": ["x", "-1", str(2**63)], "layer": ["no.such.layer"]}
# A valid call of each command (cheap: it stops at the data when nothing is refused): its arguments
# by name, then its options.
ARGS = {"eval": {"artifact": "{ckpt}"}, "info": {"artifact": "{ckpt}"}, "bench": {"artifacts": "{ckpt}"},
        "prune": {"checkpoint": "{ckpt}"}, "quantize": {"checkpoint": "{ckpt}"}, "export": {"artifact": "{ckpt}"},
        "diff": {"parent": "{ckpt}", "child": "{ckpt}"}, "explain": {"checkpoint": "{ckpt}"},
        "control": {"child": "{child}"}}
OPTIONS = {
    "train": ["--source", "synthetic", "--out", "{tmp}/run"],
    "pipeline": ["--source", "synthetic", "--out", "{tmp}/pipe"],
    "bench": ["--out", "{tmp}/bench"],
    "calibrate": ["--source", "synthetic", "--out", "{tmp}/cal.json"],
    "prune": ["--out", "{tmp}/pruned.pt"],
    "control": ["--out", "{tmp}/control.pt"],
    "quantize": ["--calibration", "{cal}", "--out", "{tmp}/int8.pt"],
    "export": ["--target", "onnx", "--precision", "fp32", "--out", "{tmp}/x.onnx"],
    "diff": ["--out", "{tmp}/diff"],
    "explain": ["--out", "{tmp}/explain"],
}
HUGE_INT = str(2**63)


def _bare(annotation):
    """int, float, Path, an Enum, str, bool, list[...] or tuple[...] behind Optional."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union or type(annotation).__name__ == "UnionType":
        return _bare(args[0])
    return annotation


def _bad_values(command: str, param, files: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(label, argv fragment) for each bad value of one parameter."""
    name = param.name
    kind = _bare(param.type_descriptor.annotation)
    flag = param.opts[0] if param.opts[0].startswith("-") else None

    def as_option(*values: str) -> list[str]:
        return [flag, *values] if flag else list(values)

    if kind is bool:
        return []
    if kind in (int, float):
        values = ["nan", "inf", "", HUGE_INT if kind is int else "1e300"]
        if name in SIGNED:
            values.append("-1e300")
        else:
            values.append("-1")
            if name not in ZERO_OK:
                values.append("0")
        return [(v or "empty", as_option(v)) for v in values]
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [("unknown choice", as_option("no-such-choice")), ("empty", as_option(""))]
    if kind is str:
        return [(repr(v), as_option(v)) for v in TEXT[name]]
    origin = typing.get_origin(kind)
    if origin is tuple:  # --compare A B
        return [(label, as_option(value, value)) for label, value in _bad_paths("input", files)]
    role = "output" if name in OUTPUTS else "input_dir" if name in INPUT_DIRS else "input"
    return [(label, as_option(value)) for label, value in _bad_paths(role, files)]


def _bad_paths(role: str, files: dict[str, Path]) -> list[tuple[str, str]]:
    if role == "output":  # a place nothing can be written: below a regular file
        return [("below a file", str(files["text"] / "sub"))]
    if role == "input_dir":
        return [("missing folder", str(files["missing"])), ("a file", str(files["text"]))]
    return [("missing file", str(files["missing"])), ("a directory", str(files["folder"])),
            ("empty file", str(files["empty"])), ("wrong kind", str(files["text"]))]


def _cases(files: dict[str, Path]):
    for command_name, command in GROUP.commands.items():
        for param in command.params:
            for label, argv in _bad_values(command_name, param, files):
                yield command_name, param, label, argv


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory):
    """The bad paths; the checkpoint and calibration of the valid calls come from `model_files`, only
    for the commands that need them (the train and pipeline cases run without a trained model)."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "folder").mkdir()
    (root / "empty.pt").write_bytes(b"")
    (root / "wrong.pt").write_text("a text file with an edgekit suffix\n")
    return {"missing": root / "no-such-file.pt", "folder": root / "folder", "empty": root / "empty.pt",
            "text": root / "wrong.pt"}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_trained, tiny_data, tiny_data_config):
    from edgekit.calibrate import make_calibration, save_calibration
    from edgekit.config import PruneConfig
    from edgekit.prune import prune_checkpoint

    folder = tmp_path_factory.mktemp("sweep-model")
    cal = save_calibration(make_calibration(tiny_data, tiny_data_config, size=20), folder / "cal.json")
    # a fine-tuned child for `edgekit control` (one epoch on a slice of the tiny data: seconds)
    child = folder / "pruned.pt"
    small = dataclasses.replace(tiny_data, train_x=tiny_data.train_x[:200], train_y=tiny_data.train_y[:200])
    prune_checkpoint(tiny_trained.checkpoint, PruneConfig(ratio=0.25, round_to=4, finetune_epochs=1, latency_runs=2),
                     child, data=small)
    return {"ckpt": tiny_trained.checkpoint, "cal": cal, "child": child}


def _argv(command: str, param, bad: list[str], files: dict[str, Path], tmp: Path) -> list[str]:
    """The command's valid call with `bad` in the place of `param` (and its companion, if it has one)."""
    fill = lambda text: text.format(tmp=tmp, **files)  # noqa: E731
    arguments = [p for p in GROUP.commands[command].params if not p.opts[0].startswith("-")]
    argv = [command]
    for argument in arguments:
        argv += bad if argument is param else [fill(ARGS[command][argument.name])]
    options = [fill(a) for a in OPTIONS.get(command, [])]
    if param.opts[0].startswith("-"):
        companion = COMPANIONS.get(f"{param.name}@{command}", COMPANIONS.get(param.name, []))
        for flag, values in ((param.opts[0], 1), *((c, len(companion) - 1) for c in companion[:1])):
            if flag in options:  # the bad value (or the companion) replaces the baseline's own
                at = options.index(flag)
                del options[at:at + 1 + values]
        options += companion + bad
    return argv + options


ALL_CASES = [(c, p.name, label) for c, p, label, _ in _cases({k: Path(k) for k in
                                                              ("ckpt", "cal", "child", "missing", "folder", "empty",
                                                               "text")})]


def test_the_sweep_covers_every_command_and_every_non_flag_option():
    swept = {(c, name) for c, name, _ in ALL_CASES}
    for command_name, command in GROUP.commands.items():
        assert command_name == "doctor" or command_name in OPTIONS or command_name in ARGS, f"add a baseline call for `edgekit {command_name}`"
        for param in command.params:
            if _bare(param.type_descriptor.annotation) is not bool:
                assert (command_name, param.name) in swept, (command_name, param.name)


@pytest.mark.parametrize("command, option, label", ALL_CASES, ids=[f"{c}-{o}-{v}" for c, o, v in ALL_CASES])
def test_every_bad_value_is_one_line_naming_it(command, option, label, sweep_files, tmp_path, monkeypatch, request):
    param = next(p for p in GROUP.commands[command].params if p.name == option)
    argv = next(a for c, p, lab, a in _cases(sweep_files) if c == command and p.name == option and lab == label)
    needs_model = any(f"{{{name}}}" in a for name in ("ckpt", "cal", "child")
                      for a in [*ARGS.get(command, {}).values(), *OPTIONS.get(command, [])])
    files = {**sweep_files, **(request.getfixturevalue("model_files") if needs_model
                               else {"ckpt": "-", "cal": "-", "child": "-"})}

    def no_data(*args, **kwargs):
        raise DataError(REACHED, "a bad value was accepted and the command went on to load data")

    monkeypatch.setattr(edgekit.data, "load_data", no_data)
    full = _argv(command, param, argv, files, tmp_path)
    result = runner.invoke(app, full, env={"COLUMNS": "400"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = f"edgekit {' '.join(full)}\nexit {result.exit_code}\nstderr: {result.stderr}\nstdout: {result.stdout[-2000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{shown}\nraised {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code != 0, shown
    assert "Traceback" not in result.output, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert REACHED not in lines[0], shown
    named = [param.opts[0]] if param.opts[0].startswith("-") else []
    named += [a for a in argv if a and not a.startswith("--")]
    if param.name in OUTPUTS:  # below a file: the line may name the file in the way, the bad path's parent
        named += [str(Path(a).parent) for a in argv if a and not a.startswith("--")]
    if _bare(param.type_descriptor.annotation) in (int, float) or param.name in TEXT:
        named = [param.opts[0]] + ([param.opts[0].lstrip("-")] if param.name == "batches" else [])
    assert any(n in lines[0] for n in named), f"the line names none of {named}\n{shown}"
