"""Data-parallel training (torchrun, gloo on the CPU), gradient accumulation and SWA.

How BatchNorm is handled, since it is the one thing a split batch changes: BN normalizes over
the images of one forward pass, so with 2 processes (or 2 accumulated micro-batches) of B/2
images it computes other statistics than one pass over B. The tests therefore compare
- 2 processes with one process at the same global batch, and accumulation with the full batch,
  on a ResNet18 with GroupNorm (per-image statistics) for BN and SiLU for ReLU
  (tests/ddp_worker.py: smooth_resnet, which says why SiLU): there the maths is the same and only
  float summation order differs, so the weights agree to ATOL/RTOL after 14 steps;
- the real model (BN, ReLU) through `edgekit train` under torchrun: interrupted and resumed, it
  ends bit for bit where the uninterrupted 2-process run does; only rank 0 writes; and so for
  `edgekit control`, whose fine-tune goes on from its scratch folder (edgekit.scratch);
- with BN, accumulation does differ from the full batch by far more than the tolerance: the
  equality above is not one that any two runs would pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekit import distributed
from edgekit.cli import app
from edgekit.config import Averaging, DataConfig, DataSource, PruneConfig, TrainConfig
from edgekit.data import load_data
from edgekit.errors import ConfigError
from edgekit.model import ModelSpec, build_model, load_checkpoint
from edgekit.prune import prune_checkpoint
from edgekit.scratch import scratch_dir
from edgekit.train import train_model

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

WORKER = Path(__file__).with_name("ddp_worker.py")
# fp32 summation order (a 2-way all-reduce, half-size convolutions) over 14 SGD steps: measured
# differences ~3e-7; the weights themselves move by ~6e-2 from their initial values.
ATOL, RTOL = 1e-5, 1e-4
RUN_FILES = {"best.pt", "best.pt.manifest.json", "last.pt", "metrics.json", "curves.png", "confusion.png"}


def torchrun(tmp_path: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py ARGS`, gloo on the CPU."""
    reports = Path(tempfile.mkdtemp(prefix="edgekit-ddp-reports-"))  # outside the watched folder
    environment = {**os.environ, "EDGEKIT_TEST_WATCH": str(tmp_path), "EDGEKIT_TEST_REPORTS": str(reports),
                   "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(WORKER), *args]
    # A session of its own, so that a hung run's workers are killed with it, not left behind.
    process = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{stderr[-3000:]}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    result.reports = reports
    return result


def writes_by_rank(run: subprocess.CompletedProcess) -> dict[int, list[str]]:
    reports = {int(path.stem.split("-")[1]): json.loads(path.read_text())
               for path in Path(run.reports).glob("writes-*.json")}
    assert set(reports) == {0, 1}, run.stdout + run.stderr  # both ranks really ran and reported
    return reports


def assert_only_rank_0_wrote(run: subprocess.CompletedProcess, *names: str) -> None:
    writes = writes_by_rank(run)
    assert writes[1] == []
    for name in names:  # the hook does see writes: rank 0's are there
        assert any(w.startswith("open ") and name in w for w in writes[0]), (name, writes[0])


def weights(path: Path, parameters_only: bool = False) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    if parameters_only:
        state = {k: v for k, v in state.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    return state


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=RTOL, msg=key)


def largest_change(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_processes_reach_the_weights_of_one_process_at_the_same_global_batch(tmp_path):
    # GroupNorm instead of BN (see the module docstring): the ranks' half batches cannot change the maths.
    run = torchrun(tmp_path, "smooth", str(tmp_path / "two"), "0")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_only_rank_0_wrote(run, ".edgekit.lock", "last.pt", "best.pt", "metrics.json", "curves.png")
    assert {p.name for p in (tmp_path / "two").iterdir()} == RUN_FILES  # rank 0's outputs, no lock left behind

    data_config, config = ddp_worker.tiny_setup()
    data = load_data(data_config)
    torch.set_num_threads(1)
    initial = ddp_worker.smooth_resnet(config.width, data.num_classes, 0).state_dict()
    train_model(ddp_worker.smooth_resnet(config.width, data.num_classes, 0), data, config, tmp_path / "one",
                data_config=data_config)
    one, two = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    assert_same_weights(two, one)
    assert largest_change(one, initial) > 1000 * ATOL  # it trained: equal weights are not the initial ones
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two")]
    assert metrics[1]["metrics"]["processes"] == 2 and "processes" not in metrics[0]["metrics"]
    assert [h["train_loss"] for h in metrics[1]["history"]] == pytest.approx(
        [h["train_loss"] for h in metrics[0]["history"]], rel=1e-5)  # global loss, reduced over both ranks


def test_edgekit_train_under_torchrun_resumes_bit_for_bit_and_only_rank_0_writes(tmp_path):
    options = ["train", "--source", "synthetic", "--epochs", "2", "--batch-size", "64", "--lr", "0.05",
               "--width", "0.125", "--cutout", "4", "--val-size", "100", "--train-per-class", "40", "--threads", "1"]
    straight = torchrun(tmp_path, "cli", *options, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "resumed"
    interrupted = torchrun(tmp_path, "cli", *options, "--out", str(out), env={"EDGEKIT_TEST_STOP_BEFORE_EPOCH": "2"})
    assert interrupted.returncode != 0
    assert "resume with" in interrupted.stderr and not (out / "best.pt").exists() and (out / "last.pt").exists()
    resumed = torchrun(tmp_path, "cli", *options, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    for run in (straight, interrupted, resumed):
        assert_only_rank_0_wrote(run, ".edgekit.lock", "last.pt")
    for folder in (out, tmp_path / "straight"):
        assert {p.name for p in folder.iterdir()} == RUN_FILES
    # Every rank restored the optimizer, generator and RNG states: a rank that had not would have
    # fed other images or momenta into the all-reduce, and rank 0's weights would differ.
    resumed_weights, straight_weights = weights(out / "last.pt"), weights(tmp_path / "straight" / "last.pt")
    for key, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["processes"] == 2 for h in history)


def test_edgekit_control_under_torchrun_goes_on_from_its_last_epoch_bit_for_bit_and_only_rank_0_writes(
        tmp_path, small_data):
    """A fine-tune's scratch folder under torchrun: rank 0 keeps it, every rank reads it (control's,
    as prune's and QAT's: one helper, edgekit.scratch)."""
    data_config, train_config = ddp_worker.tiny_setup()
    parent = train_model(build_model(ModelSpec.from_width(train_config.width, small_data.num_classes), seed=0),
                         small_data, train_config, tmp_path / "parent", data_config=data_config).checkpoint
    child = tmp_path / "child.pt"
    prune_checkpoint(Path(parent), PruneConfig(ratio=0.5, round_to=4, finetune_epochs=2, latency_runs=5), child,
                     data=small_data)
    options = ["control", str(child), "--out"]
    straight = torchrun(tmp_path, "cli", *options, str(tmp_path / "straight.pt"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "resumed.pt"
    interrupted = torchrun(tmp_path, "cli", *options, str(out), env={"EDGEKIT_TEST_STOP_BEFORE_EPOCH": "2"})
    assert interrupted.returncode != 0 and not out.exists()
    assert f"its finished epochs are kept in {scratch_dir(out)}" in interrupted.stderr
    resumed = torchrun(tmp_path, "cli", *options, str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    assert_only_rank_0_wrote(straight, "straight.pt")
    assert_only_rank_0_wrote(interrupted, "job.json", "cycle0.last.pt")
    assert_only_rank_0_wrote(resumed, "resumed.pt")
    assert not scratch_dir(out).exists() and not scratch_dir(tmp_path / "straight.pt").exists()
    # Both ranks went on from epoch 1's state: had rank 1 started afresh, its gradients would have
    # entered the all-reduce and rank 0's weights would differ.
    resumed_weights = load_checkpoint(out).build().state_dict()
    for key, value in load_checkpoint(tmp_path / "straight.pt").build().state_dict().items():
        assert torch.equal(value, resumed_weights[key]), key


def test_a_batch_the_processes_cannot_share_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(app, ["train", "--source", "synthetic", "--batch-size", "64", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--batch-size 64 does not split evenly over 3 process(es)" in result.output
    assert "e.g. --batch-size 66 or 63" in result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="multiple of 4"):
        distributed.check_batch(66, 2, accumulate=2)
    assert distributed.check_batch(64, 2, accumulate=2) == 16


def test_the_ranks_slices_are_disjoint_and_cover_the_global_batch():
    batch = torch.randperm(96)
    for size in (1, 2, 4):
        slices = [distributed.shard(batch, distributed.World(rank, size)) for rank in range(size)]
        assert torch.equal(torch.cat(slices), batch)  # in order, disjoint, nothing left out
        assert {len(s) for s in slices} == {96 // size}


@pytest.fixture(scope="module")
def small_data():
    return load_data(DataConfig(source=DataSource.synthetic, synthetic_train=600, synthetic_test=200, val_size=100))


def _final_parameters(model, data, config) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    trained = train_model(model, data, config).model  # one epoch: the kept weights are the final ones
    return {k: v.detach().clone() for k, v in trained.named_parameters()}


def test_accumulating_two_half_batches_matches_the_full_batch_and_only_batchnorm_tells_them_apart(small_data):
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, width=0.125, warmup_epochs=0.5, cutout=4, threads=1)
    half = TrainConfig(**{**config.__dict__, "accumulate": 2})
    classes = small_data.num_classes

    full = _final_parameters(ddp_worker.smooth_resnet(0.125, classes, 0), small_data, config)
    accumulated = _final_parameters(ddp_worker.smooth_resnet(0.125, classes, 0), small_data, half)
    assert_same_weights(accumulated, full)
    initial = dict(ddp_worker.smooth_resnet(0.125, classes, 0).named_parameters())
    assert largest_change(full, initial) > 1000 * ATOL

    # With BatchNorm, micro-batches of 32 normalize differently from batches of 64: not within tolerance.
    spec = ModelSpec.from_width(0.125, classes)
    bn_full = _final_parameters(build_model(spec, seed=0), small_data, config)
    bn_accumulated = _final_parameters(build_model(spec, seed=0), small_data, half)
    assert largest_change(bn_full, bn_accumulated) > 100 * ATOL


def test_accumulate_must_divide_the_batch():
    with pytest.raises(ConfigError, match="--batch-size 100 is not a multiple of --accumulate 3"):
        TrainConfig(batch_size=100, accumulate=3).validate()
    with pytest.raises(ConfigError, match=r"--accumulate must be a finite number in \[1, 2147483647\]"):
        TrainConfig(accumulate=0).validate()
    with pytest.raises(ConfigError, match=r"--swa-start must be a finite number in \[0, 2\]"):
        TrainConfig(epochs=3, averaging=Averaging.swa, swa_start=3).validate()


def test_swa_keeps_the_mean_of_the_snapshots_it_took_with_batchnorm_statistics_of_its_own(small_data, monkeypatch):
    from torch.optim.swa_utils import AveragedModel, update_bn

    from edgekit.data import batches, to_unit_float

    snapshots = []
    original = AveragedModel.update_parameters

    def record(self, model):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", record)
    config = TrainConfig(epochs=4, batch_size=100, lr=0.05, width=0.125, warmup_epochs=0.5, cutout=0, threads=1,
                         averaging=Averaging.swa, swa_start=1, swa_lr=0.01, channels_last=False)
    torch.set_num_threads(1)
    result = train_model(build_model(ModelSpec.from_width(0.125, small_data.num_classes), seed=0), small_data, config)
    assert len(snapshots) == 3  # one at the end of each epoch after the first
    kept = result.model.state_dict()
    parameters = [k for k, _ in result.model.named_parameters()]
    for key in parameters:
        mean = torch.stack([s[key] for s in snapshots]).mean(0)
        torch.testing.assert_close(kept[key], mean, atol=1e-6, rtol=1e-5, msg=key)
    assert largest_change(snapshots[0], snapshots[-1]) > 1e-3  # the mean is not any one snapshot
    assert [h["lr"] for h in result.history[1:]] == pytest.approx([0.01] * 3)  # annealed to --swa-lr, then held

    # BN statistics recomputed for the mean weights (update_bn over the unaugmented training images).
    check = build_model(ModelSpec.from_width(0.125, small_data.num_classes), seed=0)
    check.load_state_dict({**kept, **{k: v for k, v in snapshots[-1].items() if k not in parameters}})
    update_bn((to_unit_float(x) for x, _ in batches(small_data.train_x, small_data.train_y, config.eval_batch_size)),
              check)
    for key, value in check.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(kept[key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert largest_change({k: kept[k] for k in kept if k.endswith("running_var")}, snapshots[-1]) > 1e-3


def test_sync_batchnorm_is_refused_on_the_cpu_and_converts_back_to_plain_batchnorm():
    model = build_model(ModelSpec.from_width(0.125), seed=0)
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        distributed.to_sync_batchnorm(model, torch.device("cpu"), distributed.World(0, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    plain = distributed.from_sync_batchnorm(synced)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in plain.modules())
    assert all(type(m) is torch.nn.BatchNorm2d for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert [id(p) for p in plain.parameters()] == [id(p) for p in params]  # the optimizer's tensors
    for key, value in plain.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_options_added_for_distributed_training_leave_older_run_hashes_and_resumes_alone():
    from edgekit.artifacts import to_plain
    from edgekit.config import resume_mismatches

    # The hash main computed for the default recipe before --accumulate/--swa-*/--sync-bn/--arch existed.
    assert TrainConfig().config_hash(DataConfig(cache_dir="x")) == "0561dcf1232cec5d"
    recorded = to_plain(TrainConfig())
    for name in ("accumulate", "swa_start", "swa_lr", "sync_bn", "arch"):
        del recorded[name]
    defaults = to_plain(TrainConfig())
    assert resume_mismatches(recorded, defaults, defaults) == []
    assert resume_mismatches(recorded, to_plain(TrainConfig(accumulate=2)), defaults) == ["accumulate"]
