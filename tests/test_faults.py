"""Fault injection: what a careless or unlucky user does, and what edgekit must do about it.

Each case asserts the one-line message, the exit code, no traceback, and that the user's files
are intact. Real files, real processes, real file systems (a tiny tmpfs for a full disk and a
read-only one where this machine lets the test mount; chmod where it does not run as root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekit.artifacts import LOCK_NAME, guard_output, manifest_path, read_manifest, run_lock, sha256_file
from edgekit.cli import app
from edgekit.config import CalibMethod, DataConfig, DataSource, PruneConfig, QuantizeConfig, QuantMode, TrainConfig
from edgekit.data import load_data, synthetic_dataset
from edgekit.errors import ConfigError, DataError, OutputError
from edgekit.model import ModelSpec, build_model, save_checkpoint
from edgekit.train import evaluate, train_model

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--source", "synthetic", "--width", "0.125", "--epochs", "1", "--batch-size", "128",
              "--val-size", "100", "--train-per-class", "40", "--threads", "1"]


def invoke(*args):
    # wide: rich wraps long lines at the terminal width, and a test looks for whole phrases
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def one_clear_line(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "EDGEKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO), "COLUMNS": "200"}


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small (or read-only) file system, or a skip where this machine does not allow mounting."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A directory nobody can write into: chmod for a normal user, a read-only mount for root
    (root ignores file modes, so chmod alone would prove nothing)."""
    if os.geteuid() != 0:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
    else:
        with tmpfs(path, "1m", read_only=True):
            yield path


@pytest.fixture()
def checkpoint(tmp_path, tiny_trained):
    """A private copy of the tiny trained checkpoint (and its manifest) that a test may damage."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("best.pt", "best.pt.manifest.json"):
        shutil.copy(tiny_trained.checkpoint.parent / name, folder / name)
    return folder / "best.pt"


# ---- 1. nothing destroyed that edgekit did not create ----------------------------------------


def test_export_into_an_existing_user_folder_writes_beside_the_users_files(checkpoint, tmp_path):
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = invoke("export", checkpoint, "--target", "onnx", "-o", folder, "--parity-images", "32")
    one_clear_line(result, 0)
    assert (folder / "notes.txt").read_text() == "mine"  # the folder was not deleted
    assert (folder / "best.fp32.onnx").exists() and manifest_path(folder / "best.fp32.onnx").exists()
    # an earlier edgekit export of the same kind is replaced without --force
    one_clear_line(invoke("export", checkpoint, "--target", "onnx", "-o", folder, "--parity-images", "32"), 0)


def test_export_never_replaces_a_file_it_did_not_make_without_force(checkpoint, tmp_path):
    users = tmp_path / "model.onnx"
    users.write_bytes(b"the user's own model")
    result = invoke("export", checkpoint, "--target", "onnx", "-o", users, "--parity-images", "32")
    one_clear_line(result, 1, "is not an edgekit output", "--force")
    assert users.read_bytes() == b"the user's own model"
    one_clear_line(invoke("export", checkpoint, "--target", "onnx", "-o", users, "--parity-images", "32", "--force"), 0)
    assert read_manifest(users)["kind"] == "export"


@pytest.mark.parametrize("command", [
    ["export", "{src}", "--target", "onnx", "-o", "{src}"],
    ["prune", "{src}", "--out", "{src}"],
    ["quantize", "{src}", "--out", "{src}"],
])
def test_out_equal_to_the_source_is_refused(checkpoint, command):
    before = sha256_file(checkpoint)
    result = invoke(*[a.format(src=checkpoint) for a in command])
    one_clear_line(result, 1, "is the input of this command")
    assert sha256_file(checkpoint) == before and read_manifest(checkpoint)["sha256"] == before


def test_a_folder_edgekit_did_not_make_is_never_deleted_even_with_force(tmp_path):
    folder = tmp_path / "model.savedmodel"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(OutputError, match="not an edgekit output"):
            guard_output(folder, "export", force=force, directory=True)
    assert (folder / "keep.txt").read_text() == "mine"


def test_train_into_a_finished_run_needs_resume_or_force(tmp_path):
    out = tmp_path / "run"
    one_clear_line(invoke("train", *TINY_TRAIN, "--out", out), 0)
    before = sha256_file(out / "best.pt")
    result = invoke("train", *TINY_TRAIN, "--out", out, "--lr", "0.05")
    one_clear_line(result, 1, "holds a finished run", "--force")
    assert sha256_file(out / "best.pt") == before
    assert not (out / LOCK_NAME).exists()  # the lock went with the run that held it


def test_a_second_writer_is_stopped_by_the_lock_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from edgekit.artifacts import run_lock\n"
         f"with run_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("train", *TINY_TRAIN, "--out", out)
        one_clear_line(result, 1, "in use by another edgekit run", f"pid {holder.pid}", "started")
        assert not (out / "best.pt").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, as after a crash
        holder.wait()
    assert (out / LOCK_NAME).exists()
    result = invoke("train", *TINY_TRAIN, "--out", out)
    one_clear_line(result, 0, "taking over the lock", f"pid {holder.pid}")
    assert (out / "best.pt").exists() and not (out / LOCK_NAME).exists()


def test_the_lock_refuses_a_live_writer_in_the_library_too(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_killed_export_leaves_no_output_and_no_manifest(checkpoint, tmp_path):
    out = tmp_path / "deploy" / "model.onnx"
    out.parent.mkdir()
    (out.parent / "keep.txt").write_text("mine")
    before = sha256_file(checkpoint)
    process = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "export", str(checkpoint), "--target", "onnx",
                                "-o", str(out), "--parity-images", "256"], env=_env(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a timing
        while not any("model.staging" in p.name for p in out.parent.iterdir()):  # the staging file
            assert process.poll() is None, "the export finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.kill()
    finally:
        process.wait()
    assert not out.exists() and not manifest_path(out).exists()
    assert (out.parent / "keep.txt").read_text() == "mine" and sha256_file(checkpoint) == before
    # what it left behind is a hidden staging file, which the next export ignores
    one_clear_line(invoke("export", checkpoint, "--target", "onnx", "-o", out, "--parity-images", "32"), 0)
    assert read_manifest(out)["sha256"] == sha256_file(out)


def test_files_get_the_users_umask_not_0600(tiny_trained):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("best.pt", "best.pt.manifest.json", "last.pt", "metrics.json"):
        assert (tiny_trained.checkpoint.parent / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# ---- 1b. the compression stages: their own writes published together, guarded in the library ----


@pytest.fixture(scope="module")
def calibration(tiny_calibration):
    return tiny_calibration  # the session's calibration set (conftest), under the name these tests use


def _static_minmax(calibration: Path, export_onnx: bool = False) -> QuantizeConfig:
    return QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax, calibration=str(calibration),
                          export_onnx=export_onnx, latency_runs=3, threads=1)


def _no_prune_finetune() -> PruneConfig:
    return PruneConfig(ratio=0.3, finetune_epochs=0, latency_runs=3, threads=1)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _fail_publish(monkeypatch, module) -> list[Path]:
    """`module.publish` failing as a full disk would, once the artifact is complete under its staging name."""
    staged_seen: list[Path] = []

    def publish(staged, out, manifest):
        staged = Path(staged)
        assert ".staging-" in staged.name and staged.is_file() and staged.stat().st_size > 0
        staged_seen.append(staged)
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(module, "publish", publish)
    return staged_seen


@pytest.mark.parametrize("stage", ["quantize", "prune", "calibrate"])
def test_a_stage_that_fails_before_publishing_leaves_the_old_pair_or_nothing(stage, checkpoint, calibration,
                                                                              tiny_data, tiny_data_config, tmp_path,
                                                                              monkeypatch):
    import edgekit.calibrate
    import edgekit.prune
    import edgekit.quantize

    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / ("cal.json" if stage == "calibrate" else f"{stage}.pt")
    if stage == "calibrate":
        from edgekit.calibrate import make_calibration

        cal = make_calibration(tiny_data, tiny_data_config, size=32)
        module, run = edgekit.calibrate, lambda: edgekit.calibrate.save_calibration(cal, out)
    elif stage == "prune":
        module = edgekit.prune
        run = lambda: edgekit.prune.prune_checkpoint(checkpoint, _no_prune_finetune(), out, data=tiny_data)  # noqa: E731
    else:
        module = edgekit.quantize
        run = lambda: edgekit.quantize.quantize_checkpoint(checkpoint, _static_minmax(calibration), out,  # noqa: E731
                                                           data=tiny_data)
    real_publish = module.publish
    staged = _fail_publish(monkeypatch, module)
    with pytest.raises(OSError, match="No space left"):
        run()
    assert staged, "the stage never reached publication"
    assert _files(folder) == {}  # no output, no manifest, no staging or .tmp file
    monkeypatch.setattr(module, "publish", real_publish)
    run()
    good = _files(folder)
    assert set(good) == {out.name, manifest_path(out).name}
    assert read_manifest(out)["sha256"] == sha256_file(out)
    _fail_publish(monkeypatch, module)
    with pytest.raises(OSError, match="No space left"):
        run()
    assert _files(folder) == good  # the earlier pair, byte for byte


def test_quantize_refuses_a_users_file_before_any_work_and_replaces_it_only_with_force(checkpoint, calibration,
                                                                                        tiny_data, tmp_path,
                                                                                        monkeypatch):
    import edgekit.quantize

    users = tmp_path / "int8.pt"
    users.write_bytes(b"the user's own model")
    result = invoke("quantize", checkpoint, "--calibration", calibration, "--method", "minmax", "--out", users)
    one_clear_line(result, 1, "is not an edgekit output", "--force")
    config = _static_minmax(calibration)
    with monkeypatch.context() as patch:
        patch.setattr(edgekit.quantize, "load_checkpoint",
                      lambda *a, **k: pytest.fail("work started before the output was checked"))
        with pytest.raises(OutputError, match="is not an edgekit output") as info:
            edgekit.quantize.quantize_checkpoint(checkpoint, config, users, data=tiny_data)
    assert "\n" not in info.value.message and "--force" in info.value.hint
    assert users.read_bytes() == b"the user's own model" and not manifest_path(users).exists()
    # an edgekit output of another kind (the float checkpoint) is not replaced without --force either
    other = tmp_path / "other.pt"
    shutil.copy(checkpoint, other)
    shutil.copy(manifest_path(checkpoint), manifest_path(other))
    with pytest.raises(OutputError, match="is an edgekit checkpoint, not a quantized"):
        edgekit.quantize.quantize_checkpoint(checkpoint, config, other, data=tiny_data)
    assert sha256_file(other) == sha256_file(checkpoint)
    edgekit.quantize.quantize_checkpoint(checkpoint, config, users, data=tiny_data, force=True)
    assert read_manifest(users)["kind"] == "quantized" and read_manifest(users)["sha256"] == sha256_file(users)
    assert not [p.name for p in tmp_path.iterdir() if ".staging-" in p.name or p.name.endswith(".tmp")]


def test_quantize_refuses_a_users_file_where_its_qdq_onnx_goes_before_any_work(checkpoint, calibration, tiny_data,
                                                                                tmp_path, monkeypatch):
    import edgekit.quantize

    side = tmp_path / "int8.qdq.onnx"
    side.write_bytes(b"the user's own onnx")
    monkeypatch.setattr(edgekit.quantize, "load_checkpoint",
                        lambda *a, **k: pytest.fail("work started before the outputs were checked"))
    with pytest.raises(OutputError, match="int8.qdq.onnx exists and is not an edgekit output"):
        edgekit.quantize.quantize_checkpoint(checkpoint, _static_minmax(calibration, export_onnx=True),
                                             tmp_path / "int8.pt", data=tiny_data)
    assert side.read_bytes() == b"the user's own onnx" and not (tmp_path / "int8.pt").exists()


@pytest.mark.parametrize("spelling", ["same path", "symlink"])
@pytest.mark.parametrize("stage", ["quantize", "prune"])
def test_the_library_refuses_an_out_that_is_the_source_even_with_force(stage, spelling, checkpoint, calibration,
                                                                       tiny_data):
    from edgekit.prune import prune_checkpoint
    from edgekit.quantize import quantize_checkpoint

    out = checkpoint
    if spelling == "symlink":
        out = checkpoint.with_name("link.pt")
        out.symlink_to(checkpoint)
    before = sha256_file(checkpoint)
    with pytest.raises(OutputError, match="is the input of this command"):
        if stage == "quantize":
            quantize_checkpoint(checkpoint, _static_minmax(calibration), out, data=tiny_data, force=True)
        else:
            prune_checkpoint(checkpoint, _no_prune_finetune(), out, data=tiny_data, force=True)
    assert sha256_file(checkpoint) == before and read_manifest(checkpoint)["sha256"] == before
    assert not [p.name for p in checkpoint.parent.iterdir() if ".staging-" in p.name]


def test_save_calibration_refuses_a_users_file(tiny_data, tiny_data_config, tmp_path):
    from edgekit.calibrate import make_calibration, save_calibration

    users = tmp_path / "cal.json"
    users.write_text('{"mine": true}\n')
    cal = make_calibration(tiny_data, tiny_data_config, size=32)
    with pytest.raises(OutputError, match="is not an edgekit output"):
        save_calibration(cal, users)
    assert users.read_text() == '{"mine": true}\n' and not manifest_path(users).exists()
    save_calibration(cal, users, force=True)
    assert read_manifest(users)["kind"] == "calibration"


# ---- 2. the cache key is the content actually read -------------------------------------------


def _image_tree(root: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / f"c{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")


def test_two_folders_that_differ_only_behind_links_get_two_caches_and_two_accuracies(tmp_path, tiny_trained):
    raw = synthetic_dataset(60, 200, seed=7)
    real = tmp_path / "real"
    _image_tree(real / "train", raw["train_x"], raw["train_y"])
    _image_tree(real / "test", raw["test_x"], raw["test_y"])
    classes = sorted(p.name for p in (real / "train").iterdir())
    # Same names, same tree, only links: b's test class folders point at the next class's images.
    for name, shift in (("a", 0), ("b", 1)):
        for split in ("train", "test"):
            (tmp_path / name / split).mkdir(parents=True)
            for k, cls in enumerate(classes):
                target = classes[(k + shift) % len(classes)] if split == "test" else cls
                (tmp_path / name / split / cls).symlink_to(real / split / target, target_is_directory=True)
    cache = tmp_path / "cache"
    loaded = {name: load_data(DataConfig(source=DataSource.folder, data_dir=str(tmp_path / name), val_size=10,
                                         cache_dir=str(cache))) for name in ("a", "b")}
    assert len(list(cache.glob("*.pt"))) == 2
    assert loaded["a"].fingerprint != loaded["b"].fingerprint
    model = tiny_trained.model
    accuracy = {name: evaluate(model, d.test_x, d.test_y)["accuracy"] for name, d in loaded.items()}
    assert accuracy["a"] > 0.5 and accuracy["b"] < accuracy["a"] - 0.3, accuracy


# ---- 3. numbers validated in one place, divergence stopped -------------------------------------


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "nan"], "--lr must be a finite number in (0, 10], got nan"),
    (["train", "--lr", "inf"], "--lr must be a finite number"),
    (["train", "--threads", "0"], "--threads must be a finite number in [1, 2147483647], got 0"),
    (["train", "--epochs", "0"], "--epochs must be a finite number in [1, 2147483647]"),
    (["train", "--label-smoothing", "1.5"], "--label-smoothing must be a finite number in [0, 1)"),
    (["train", "--cutout", "-1"], "--cutout must be a finite number in [0, 32]"),
    (["train", "--grad-clip", "0"], "--grad-clip must be a finite number in (0, 2147483647]"),
    (["train", "--val-size", "0"], "--val-size must be a finite number in [1, 2147483647]"),
    (["prune", "{ckpt}", "--ratio", "1.5"], "--ratio must be a finite number in (0, 1)"),
    (["prune", "{ckpt}", "--finetune-lr", "nan"], "--finetune-lr must be a finite number"),
    (["prune", "{ckpt}", "--depth-tilt", "2"], "--depth-tilt must be a finite number in [-1, 1], got 2"),
    (["prune", "{ckpt}", "--depth-tilt", "0.5", "--global"], "--depth-tilt sets each stage's share of a uniform prune"),
    (["quantize", "{ckpt}", "--qat-lr", "-1", "--out", "{tmp}/q.pt"], "--qat-lr must be a finite number in (0, 10]"),
    (["export", "{ckpt}", "--target", "onnx", "--parity-images", "0", "-o", "{tmp}/x.onnx"],
     "--parity-images must be a finite number in [1, 2147483647]"),
])
def test_every_numeric_option_out_of_range_is_one_line_with_the_range(args, message, checkpoint, tmp_path):
    result = invoke(*[a.format(ckpt=checkpoint, tmp=tmp_path) for a in args], *(
        ["--source", "synthetic", "--out", tmp_path / "fresh"] if args[0] == "train" else []))
    one_clear_line(result, 2, message)
    assert not (tmp_path / "fresh").exists()  # refused before anything was written


def test_a_loss_that_turns_non_finite_stops_the_run_naming_the_epoch(tiny_data):
    student = build_model(ModelSpec.from_width(0.125), seed=0)
    teacher = build_model(ModelSpec.from_width(0.125), seed=1)
    with torch.no_grad():
        teacher.fc.weight.fill_(float("nan"))  # a broken teacher: its logits, and so the loss, are NaN
    config = TrainConfig(epochs=2, batch_size=256, width=0.125, cutout=0, threads=1, distill_alpha=0.5)
    with pytest.raises(ConfigError, match=r"training diverged: the loss became nan in epoch 1, step 1") as info:
        train_model(student, tiny_data, config, teacher=teacher)
    assert "--lr" in info.value.hint


def test_a_one_class_folder_is_refused(tmp_path):
    raw = synthetic_dataset(20, 20, seed=0)
    keep = raw["train_y"] == 0
    _image_tree(tmp_path / "one" / "train", raw["train_x"][keep], raw["train_y"][keep])
    _image_tree(tmp_path / "one" / "test", raw["train_x"][keep], raw["train_y"][keep])
    with pytest.raises(DataError, match="at least two"):
        load_data(DataConfig(source=DataSource.folder, data_dir=str(tmp_path / "one"), val_size=1,
                             cache_dir=str(tmp_path / "cache")))


def test_a_read_only_out_is_refused_before_the_first_epoch(tmp_path):
    with read_only_dir(tmp_path / "ro") as ro:
        result = invoke("train", *TINY_TRAIN, "--out", ro / "run")
        one_clear_line(result, 1, f"cannot write into {ro / 'run'}")
        assert "epoch 1" not in result.output  # no training happened
        assert ("read-only" in result.output) or ("permission denied" in result.output)


# ---- 4. OS errors at the edge ----------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_users_files(tmp_path):
    with tmpfs(tmp_path / "small", "160k") as small:
        (small / "keep.txt").write_text("mine")
        result = invoke("train", *TINY_TRAIN, "--out", small / "run")
        one_clear_line(result, 1, "no space left on the device", str(small / "run"))
        assert (small / "keep.txt").read_text() == "mine"
        leftovers = [p.name for p in (small / "run").iterdir()]
        assert not any(name.endswith(".tmp") for name in leftovers), leftovers
        assert "best.pt" not in leftovers and LOCK_NAME not in leftovers


def test_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("mine")
    result = invoke("train", *TINY_TRAIN, "--out", tmp_path / "file" / "run")
    one_clear_line(result, 1, f"{tmp_path / 'file' / 'run'}")
    assert (tmp_path / "file").read_text() == "mine"


def test_an_existing_directory_as_a_file_output_is_one_line(checkpoint, tmp_path):
    (tmp_path / "q.pt").mkdir()
    one_clear_line(invoke("quantize", checkpoint, "--out", tmp_path / "q.pt"), 1, "is an existing directory")


def _ctrl_c_once_written(args: list[str], marker: Path, tmp_path: Path) -> tuple[int, str]:
    """Run `edgekit ARGS` in a real process, send it SIGINT once `marker` exists (an epoch saved),
    and return its exit code and stderr."""
    # A shell runs background jobs with SIGINT ignored, and Python keeps an inherited "ignore": restore the
    # default so the child gets the KeyboardInterrupt a user's Ctrl-C gives, however pytest was started.
    process = subprocess.Popen([sys.executable, "-m", "edgekit.cli", *args],
                               env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a timing
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_ctrl_c_during_training_says_how_to_resume_and_exits_130(tmp_path):
    out = tmp_path / "run"
    args = list(TINY_TRAIN)
    args[args.index("--epochs") + 1] = "50"
    returncode, stderr = _ctrl_c_once_written(["train", *args, "--out", str(out)], out / "last.pt", tmp_path)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"saved in {out / 'last.pt'}; resume with: edgekit train" in stderr and "--resume" in stderr
    assert not (out / LOCK_NAME).exists()


def test_ctrl_c_during_a_prune_fine_tune_says_where_its_epochs_are_and_exits_130(checkpoint, tmp_path):
    out = tmp_path / "pruned.pt"
    scratch = tmp_path / "pruned.pt.finetune"
    args = ["prune", str(checkpoint), "--ratio", "0.5", "--round-to", "4", "--finetune-epochs", "50",
            "--threads", "1", "--out", str(out)]
    returncode, stderr = _ctrl_c_once_written(args, scratch / "step1" / "cycle0.last.pt", tmp_path)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr and not out.exists()
    assert f"its finished epochs are kept in {scratch}; run the same command again" in stderr


# ---- 5. info and doctor tell the truth -------------------------------------------------------


def test_info_warns_when_the_manifest_belongs_to_another_file(checkpoint, tmp_path):
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model(ModelSpec.from_width(0.125), seed=5), [f"c{i}" for i in range(10)])
    shutil.copy(manifest_path(checkpoint), manifest_path(other))
    result = invoke("info", other)
    one_clear_line(result, 0, "does not describe this file")
    assert "does not describe" not in invoke("info", checkpoint).output


def test_doctor_prints_install_hints_literally():
    from edgekit.formats import FORMATS

    reasons = []
    for fmt in FORMATS.values():
        with contextlib.suppress(ImportError):
            reasons.append(fmt.unavailable_reason())
    hinted = [r for r in reasons if r and "edgekit[" in r]
    if not hinted:
        pytest.skip("every optional runtime is installed here: no install hint to print")
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "400"})
    one_clear_line(result, 0)
    for reason in hinted:
        extra = reason[reason.index("edgekit["):].split("]")[0] + "]"
        assert extra in result.output, (extra, result.output)
