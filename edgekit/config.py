"""Each stage's settings as a dataclass. The defaults are the documented recipe."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path


def default_cache_dir() -> str:
    return os.environ.get("EDGEKIT_CACHE", str(Path.home() / ".cache" / "edgekit"))


class DataSource(str, Enum):
    synthetic = "synthetic"
    cifar10 = "cifar10"
    folder = "folder"


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(str, Enum):
    onecycle = "onecycle"
    cosine = "cosine"  # linear warm-up, then cosine to zero


class Averaging(str, Enum):
    none = "none"
    ema = "ema"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class DataConfig:
    source: DataSource = DataSource.cifar10
    data_dir: str | None = None  # an image folder, or where CIFAR-10 lives / is downloaded to
    cache_dir: str = field(default_factory=default_cache_dir)
    val_size: int = 2500  # carved from train, class-balanced; test is for reporting only
    train_per_class: int | None = None  # a class-balanced subset of train, for short runs
    test_limit: int | None = None
    synthetic_train: int = 6000
    synthetic_test: int = 1000
    seed: int = 0


@dataclass
class TrainConfig:
    """The default recipe targets >= 95 % on CIFAR-10 at width 1 (see README, 'Training recipe').

    It follows the published ResNet-18 baseline of KellerJordan/cifar10-zoo
    (airbench/baselines/train_resnet18_96.py: 95.5 % at 80 epochs without test-time
    augmentation): batch ~500, peak lr 0.2 with Nesterov, wd 5e-4, a triangular schedule that
    warms up from 0.2x over the first 20 % of steps, flip + 4-px translate + 12-px Cutout.
    """

    epochs: int = 80
    batch_size: int = 512
    optimizer: Optimizer = Optimizer.sgd
    lr: float = 0.2  # peak learning rate, for batch 512
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True  # weight decay on BN scales/shifts and biases too (the baselines do)
    label_smoothing: float = 0.1
    schedule: Schedule = Schedule.onecycle
    warmup_epochs: float | None = None  # None = the first 20 % of the run
    warmup_start: float = 0.2  # learning-rate factor at the first step of the warm-up
    cutout: int = 12  # side of the Cutout square in pixels (always fully inside the image); 0 = off
    averaging: Averaging = Averaging.none
    ema_decay: float = 0.999
    grad_clip: float | None = None
    # Knowledge distillation (used when train_model gets a teacher, e.g. the unpruned model in a
    # prune fine-tune): loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T).
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPUs with native bf16 (AVX512-BF16, AMX): faster, not bit-reproducible
    channels_last: bool = True
    compile: bool = False
    device: Device = Device.auto
    width: float = 1.0
    seed: int = 0
    eval_batch_size: int = 1024
    threads: int | None = None
    tensorboard: str | None = None  # a log folder for TensorBoard scalars (the `tensorboard` extra); None = off

    def warmup_steps(self, steps_per_epoch: int) -> int:
        epochs = 0.2 * self.epochs if self.warmup_epochs is None else self.warmup_epochs
        return int(epochs * steps_per_epoch)

    def config_hash(self, data: DataConfig) -> str:
        # Where TensorBoard logs go changes no weight: left out, so hashes of older runs still match.
        train = {k: v for k, v in asdict(self).items() if k != "tensorboard"}
        payload = json.dumps({"train": train, "data": asdict(data)}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Settings that change how fast a run goes or where it reads from, never the weights it reaches:
# a resumed run may differ from the interrupted one in these.
RESUME_FREE_FIELDS = frozenset({"threads", "eval_batch_size", "cache_dir", "data_dir", "tensorboard"})


def resume_mismatches(recorded: dict, current: dict, defaults: dict) -> list[str]:
    """Fields of `current` that differ from the interrupted run's `recorded` ones.

    A field the recorded run did not have yet (it was added to edgekit later) matches when it
    still has its default, so a long run survives an upgrade that adds an option."""
    mismatched = []
    for name, value in current.items():
        if name in RESUME_FREE_FIELDS:
            continue
        reference = recorded[name] if name in recorded else defaults.get(name)
        if json.dumps(value, sort_keys=True, default=str) != json.dumps(reference, sort_keys=True, default=str):
            mismatched.append(name)
    return mismatched


def quick_profile() -> tuple[DataConfig, TrainConfig]:
    """The offline demo: synthetic data, a narrow model, a couple of minutes on two CPU cores."""
    data = DataConfig(source=DataSource.synthetic, val_size=500, synthetic_train=5000, synthetic_test=1000)
    # No Cutout: a 12-px hole can erase most of a synthetic shape, which is the whole label.
    train = TrainConfig(epochs=4, batch_size=128, lr=0.1, width=0.25, warmup_epochs=0.5, cutout=0)
    return data, train


@dataclass
class ExportOptions:
    """How `edgekit export` writes a target file and gates it against its source."""

    batch: int = 1  # the static batch dimension (ignored with dynamic_batch)
    dynamic_batch: bool = False
    opset: int = 17
    calibration: str | None = None  # path to a calibration definition (needed for int8)
    parity_images: int = 256  # seeded real test images the exported file must agree on
    keep_failed: bool = False  # keep a file that failed the parity gate (for debugging)
    debug_parity: bool = False  # on failure, find the first layer whose output diverges
    int8_io: bool = False  # int8 input/output tensors (integer-only targets); runners still take floats
    threads: int | None = None
    seed: int = 0


def data_config_from_dict(values: dict | None) -> DataConfig:
    """Rebuild a DataConfig recorded in a checkpoint (plain JSON data)."""
    values = dict(values or {})
    # The cache is a property of this machine, not of the data: never take it from elsewhere.
    known = {k: v for k, v in values.items() if k in DataConfig.__dataclass_fields__ and k != "cache_dir"}
    if "source" in known:
        known["source"] = DataSource(known["source"])
    return DataConfig(**known)


# ---- compression (prune, calibrate, quantize) -------------------------------------------------


class Importance(str, Enum):
    l1 = "l1"  # |w| summed over the channel's group (Torch-Pruning MagnitudeImportance p=1)
    l2 = "l2"
    bn = "bn"  # BN scale |gamma|
    taylor = "taylor"  # |w * dL/dw|, gradients from a few training batches


class QuantMode(str, Enum):
    dynamic = "dynamic"
    static = "static"
    qat = "qat"


class CalibMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"  # KL-divergence (torch HistogramObserver)
    mse = "mse"
    auto = "auto"  # try each, keep the best on the validation split


@dataclass
class CalibrationConfig:
    size: int = 512
    seed: int = 0
    name: str | None = None  # default: <data>-<size>


@dataclass
class PruneConfig:
    ratio: float | None = 0.3  # channel sparsity per prunable layer (uniform) or overall (global)
    target_macs: int | None = None  # instead of ratio: prune until MACs <= this
    importance: Importance = Importance.l1
    global_pruning: bool = False
    round_to: int = 8  # pruned channel counts stay multiples of this (SIMD and int8 kernels like it)
    steps: int = 1  # iterative prune -> fine-tune -> BN recalibration rounds
    finetune_epochs: int = 2  # per step; 0 = no fine-tune
    finetune_lr: float = 0.02
    # Fine-tune against the unpruned model's logits as well as the labels (0 = labels only): the
    # unpruned model is the best teacher a pruned child can have, and it is already at hand.
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    batch_size: int = 256
    cpu_bf16: bool = False  # fine-tune in bf16 autocast on a CPU with native bf16 (see TrainConfig)
    bn_batches: int = 20  # training batches for BN recalibration
    taylor_batches: int = 4
    unstructured: bool = False  # zero weights by magnitude instead (no dense speed-up)
    latency_runs: int = 200
    threads: int = 1  # pinned for the latency measurement
    seed: int = 0
    tensorboard: str | None = None  # TensorBoard log folder for the fine-tunes (None = off)


@dataclass
class QuantizeConfig:
    mode: QuantMode = QuantMode.static
    method: CalibMethod = CalibMethod.auto
    calibration: str | None = None  # a calibration/*.json definition; required for static and qat
    percentile: float = 99.99
    backend: str = "x86"
    qat_epochs: int = 3
    qat_lr: float = 0.002
    qat_freeze_epoch: int = 1  # observers and BN statistics frozen after this many QAT epochs
    batch_size: int = 256
    sensitivity: bool = False
    keep_float: int = 0  # keep the N most sensitive layers in float (implies the sensitivity pass)
    export_onnx: bool = True  # a QDQ ONNX beside the int8 checkpoint, for the exporters
    opset: int = 17
    latency_runs: int = 200
    threads: int = 1
    seed: int = 0
    tensorboard: str | None = None  # TensorBoard log folder for the QAT fine-tune (None = off)


@dataclass
class BenchConfig:
    """How `edgekit bench` measures: the protocol recorded beside every result."""

    threads: int = 2  # intra-op threads given to every runtime (torch, ORT, TFLite)
    batches: tuple[int, ...] = (1, 8, 32, 128)  # throughput sweep
    warmup: int = 10  # untimed batch-1 calls before timing (allocators, JIT, caches)
    runs: int = 100  # at least this many timed batch-1 calls ...
    min_seconds: float = 2.0  # ... and at least this long, whichever takes longer
    sweep_seconds: float = 1.0  # per batch size in the throughput sweep (at least 3 calls)
    test_limit: int | None = None  # first N test images only (quick runs); None = the full split
    eval_batch: int = 256  # batch used for the accuracy pass
    baselines: bool = False  # also make and measure the "without edgekit" int8 baselines
    baseline_dir: str = "artifacts/baselines"
    calibration: str | None = None  # calibration definition for the baselines (default: from lineage)
    data: DataConfig | None = None  # override the data recorded in the artifacts' lineage
    seed: int = 0
    diff: bool = False  # per row: images flipped against the fp32 root, and which class (edgekit.diagnose)
