"""Each stage's settings as a dataclass. The defaults are the documented recipe."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .choices import (  # noqa: F401  (re-exported: the configs' vocabulary, imported from here)
    CEILING,
    ONNX_OPSET,
    Arch,
    Averaging,
    CalibMethod,
    DataSource,
    Device,
    Importance,
    Optimizer,
    QuantBackend,
    QuantMode,
    Schedule,
    Split,
    Tta,
    WeightScheme,
    check_choice,
    check_range,
)


def default_cache_dir() -> str:
    return os.environ.get("EDGEKIT_CACHE", str(Path.home() / ".cache" / "edgekit"))


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

    def validate(self, flags: dict[str, str] | None = None) -> "DataConfig":
        """`flags`: the command's own name for a field where it differs (calibrate's --data-seed)."""
        name = (flags or {}).get
        check_range(name("val_size", "val_size"), self.val_size, 1,
                    hint="the validation split picks the best epoch: e.g. --val-size 2500")
        check_range(name("train_per_class", "train_per_class"), self.train_per_class, 1, optional=True)
        check_range(name("test_limit", "test_limit"), self.test_limit, 1, optional=True)
        check_range("synthetic_train", self.synthetic_train, 1)
        check_range("synthetic_test", self.synthetic_test, 1)
        check_range(name("seed", "seed"), self.seed, 0)
        if self.source is DataSource.folder and self.data_dir is not None and not Path(self.data_dir).is_dir():
            from .errors import DataError

            # checked here, before any decoding; a cifar10 --data-dir may still be a download target
            what = "is a file, not a folder" if Path(self.data_dir).exists() else "not found"
            raise DataError(f"data directory {what}: {self.data_dir}",
                            "pass --data-dir pointing at a folder with train/<class>/ and test/<class>/ images")
        return self


@dataclass
class TrainConfig:
    """The default recipe targets >= 95 % on CIFAR-10 at width 1 (see README, 'Training recipe').

    It follows the published ResNet-18 baseline of KellerJordan/cifar10-zoo
    (airbench/baselines/train_resnet18_96.py: 95.5 % at 80 epochs without test-time
    augmentation): batch ~500, peak lr 0.2 with Nesterov, wd 5e-4, a triangular schedule that
    warms up from 0.2x over the first 20 % of steps, flip + 4-px translate + 12-px Cutout.
    """

    epochs: int = 80
    batch_size: int = 512  # the global batch: one optimizer step, over all processes and accumulated micro-batches
    accumulate: int = 1  # gradient accumulation: each step sums this many micro-batches of batch_size / accumulate
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
    swa_start: int | None = None  # SWA: plain epochs before the first snapshot; None = 75 % of the run
    swa_lr: float | None = None  # SWA: the learning rate held while snapshots are taken; None = lr / 10
    sync_bn: bool = False  # multi-process runs: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)
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
    arch: Arch = Arch.resnet18
    width: float = 1.0
    seed: int = 0
    eval_batch_size: int = 1024
    threads: int | None = None
    tensorboard: str | None = None  # a log folder for TensorBoard scalars (the `tensorboard` extra); None = off

    def validate(self) -> "TrainConfig":
        """Every numeric field in its range (NaN and infinities refused), before any work is done."""
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0, 10, low_open=True, hint="e.g. --lr 0.2 for SGD at batch 512, 1e-3 for AdamW")
        check_range("momentum", self.momentum, 0, 1, high_open=True)
        check_range("weight_decay", self.weight_decay, 0, 1)
        check_range("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        check_range("warmup_epochs", self.warmup_epochs, 0, self.epochs, optional=True)
        check_range("warmup_start", self.warmup_start, 0, 1)
        check_range("cutout", self.cutout, 0, 32, hint="the side of the Cutout square in pixels; 0 turns it off")
        check_range("ema_decay", self.ema_decay, 0, 1, low_open=True, high_open=True)
        check_range("accumulate", self.accumulate, 1, hint="e.g. --accumulate 2: two micro-batches per optimizer step")
        check_range("swa_start", self.swa_start, 0, self.epochs - 1, optional=True,
                    hint=f"the plain epochs before SWA's first snapshot, 0 to {self.epochs - 1} for {self.epochs} epochs")
        check_range("swa_lr", self.swa_lr, 0, 10, low_open=True, optional=True)
        if isinstance(self.accumulate, int) and self.accumulate >= 1 and isinstance(self.batch_size, int) \
                and self.batch_size % self.accumulate:
            from .errors import ConfigError

            raise ConfigError(f"--batch-size {self.batch_size} is not a multiple of --accumulate {self.accumulate}",
                              "--batch-size is the effective batch of one optimizer step: pass a multiple of "
                              f"{self.accumulate}, e.g. --batch-size {self.batch_size - self.batch_size % self.accumulate + self.accumulate}")
        check_range("grad_clip", self.grad_clip, 0, low_open=True, optional=True)
        check_range("distill", self.distill_alpha, 0, 1,
                    hint="e.g. --distill 0.5 (half the loss from the teacher) or --distill 0 (labels only)")
        check_range("distill_temperature", self.distill_temperature, 0, low_open=True)
        check_range("width", self.width, 0, 8, low_open=True, hint="e.g. --width 1.0 (11.2M parameters) or 0.25")
        check_range("eval_batch_size", self.eval_batch_size, 1)
        check_range("seed", self.seed, 0)
        # 0 is refused rather than read as "the default": it was recorded as 0 while torch's default ran.
        check_range("threads", self.threads, 1, optional=True,
                    hint="pass --threads N with N >= 1, or leave it out to use torch's default")
        return self

    def swa_start_epoch(self) -> int:
        return int(0.75 * self.epochs) if self.swa_start is None else self.swa_start

    def swa_lr_value(self) -> float:
        return self.lr / 10 if self.swa_lr is None else self.swa_lr

    def warmup_steps(self, steps_per_epoch: int) -> int:
        epochs = 0.2 * self.epochs if self.warmup_epochs is None else self.warmup_epochs
        return int(epochs * steps_per_epoch)

    def config_hash(self, data: DataConfig) -> str:
        # Where TensorBoard logs go changes no weight: left out, so hashes of older runs still match;
        # so are options added later while they keep their defaults.
        train = {k: v for k, v in asdict(self).items()
                 if k != "tensorboard" and not (k in HASHED_UNLESS_DEFAULT and v == HASHED_UNLESS_DEFAULT[k])}
        payload = json.dumps({"train": train, "data": asdict(data)}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Options added after training states recorded their hash: at these defaults they leave the hash as it was.
HASHED_UNLESS_DEFAULT = {"accumulate": 1, "swa_start": None, "swa_lr": None, "sync_bn": False, "arch": "resnet18"}

# Settings that change how fast a run goes or where it reads from, never the weights it reaches:
# a resumed run may differ from the interrupted one in these.
RESUME_FREE_FIELDS = frozenset({"threads", "eval_batch_size", "cache_dir", "data_dir", "tensorboard"})


def changed_fields(recorded: dict, current: dict, defaults: dict, ignored: frozenset[str] = frozenset()) -> list[str]:
    """Fields of `current` (a config as plain data) that differ from the `recorded` one a file was made with.

    A field the recorded config did not have yet (it was added to edgekit later) matches when it
    still has its default, so what an older edgekit made still counts after an upgrade that adds
    an option."""
    mismatched = []
    for name, value in current.items():
        if name in ignored:
            continue
        reference = recorded[name] if name in recorded else defaults.get(name)
        if json.dumps(value, sort_keys=True, default=str) != json.dumps(reference, sort_keys=True, default=str):
            mismatched.append(name)
    return mismatched


def resume_mismatches(recorded: dict, current: dict, defaults: dict) -> list[str]:
    """Fields of `current` that differ from the interrupted run's `recorded` ones (see changed_fields)."""
    return changed_fields(recorded, current, defaults, RESUME_FREE_FIELDS)


def finetune_config(epochs: int, batch_size: int, lr: float, seed: int, **overrides: Any) -> TrainConfig:
    """The schedule every fine-tune shares (prune, QAT, and the controls that fine-tune a parent the
    same way): cosine decay from `lr` without warm-up, no Cutout: a short polish of a trained model,
    not a training recipe."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule=Schedule.cosine, warmup_epochs=0.0,
                       channels_last=False, cutout=0, seed=seed, eval_batch_size=500, **overrides)


def quick_profile() -> tuple[DataConfig, TrainConfig]:
    """The offline demo: synthetic data, a narrow model, a couple of minutes on two CPU cores."""
    data = DataConfig(source=DataSource.synthetic, val_size=500, synthetic_train=5000, synthetic_test=1000)
    # No Cutout: a 12-px hole can erase most of a synthetic shape, which is the whole label.
    # Three epochs reach ~98 % on the synthetic shapes (a fourth added 1.4 pt and 7 s of a 2-minute demo).
    train = TrainConfig(epochs=3, batch_size=128, lr=0.1, width=0.25, warmup_epochs=0.5, cutout=0)
    return data, train


@dataclass
class EvalConfig:
    """How `edgekit eval` scores a file. TTA is reported beside the plain figure, never instead of it."""

    split: Split = Split.test
    tta: Tta = Tta.none
    batch_size: int = 256
    threads: int | None = None

    def validate(self) -> "EvalConfig":
        check_range("batch_size", self.batch_size, 1, hint="e.g. --batch-size 256")
        check_range("threads", self.threads, 1, optional=True)
        return self


@dataclass
class ExportOptions:
    """How `edgekit export` writes a target file and gates it against its source."""

    batch: int = 1  # the static batch dimension (ignored with dynamic_batch)
    dynamic_batch: bool = False
    opset: int = ONNX_OPSET
    calibration: str | None = None  # path to a calibration definition (needed for int8)
    parity_images: int = 256  # seeded real test images the exported file must agree on
    keep_failed: bool = False  # keep a file that failed the parity gate (for debugging)
    debug_parity: bool = False  # on failure, find the first layer whose output diverges
    int8_io: bool = False  # int8 input/output tensors (integer-only targets); runners still take floats
    threads: int | None = None
    seed: int = 0

    def validate(self) -> "ExportOptions":
        check_range("batch", self.batch, 1)
        check_range("opset", self.opset, ONNX_OPSET, hint=f"ONNX opset {ONNX_OPSET} or newer, e.g. --opset {ONNX_OPSET}")
        check_range("parity_images", self.parity_images, 1, hint="e.g. --parity-images 256")
        check_range("threads", self.threads, 1, optional=True)
        check_range("seed", self.seed, 0)
        return self


def data_config_from_dict(values: dict | None) -> DataConfig:
    """Rebuild a DataConfig recorded in a checkpoint (plain JSON data)."""
    values = dict(values or {})
    # The cache is a property of this machine, not of the data: never take it from elsewhere.
    known = {k: v for k, v in values.items() if k in DataConfig.__dataclass_fields__ and k != "cache_dir"}
    if "source" in known:
        known["source"] = DataSource(known["source"])
    return DataConfig(**known)


# ---- compression (prune, calibrate, quantize) -------------------------------------------------


@dataclass
class CalibrationConfig:
    """The calibration set every int8 path shares (edgekit calibrate, the pipeline's calibrate stage)."""

    size: int = 512  # images, class-balanced; 128, 512 and 1024 are committed for the CIFAR-10 JPEGs
    seed: int = 0
    name: str | None = None  # default: <data>-<size>

    def validate(self) -> "CalibrationConfig":
        check_range("size", self.size, 1, hint="images in the set, e.g. --size 512")
        check_range("seed", self.seed, 0)
        return self


@dataclass
class PruneConfig:
    ratio: float | None = 0.3  # channel sparsity per prunable layer (uniform) or overall (global)
    target_macs: int | None = None  # instead of ratio: prune until MACs <= this
    importance: Importance = Importance.l1
    global_pruning: bool = False
    # Prune later stages harder (> 0) or earlier ones (< 0), keeping the mean share: stage k of n
    # gets the ratio times 1 + tilt * (k - m) / m, m = (n - 1) / 2. On a batch-1 CPU a late stage's
    # MAC costs more time than an early one's (benchmarks/results/prune-allocation-probe.md).
    depth_tilt: float = 0.0
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

    def validate(self) -> "PruneConfig":
        check_range("ratio", self.ratio, 0, 1, low_open=True, high_open=True, optional=True,
                    hint="e.g. --ratio 0.3 removes 30 % of each layer's channels (about 2x fewer MACs)")
        check_range("target_macs", self.target_macs, 0, low_open=True, optional=True, hint="e.g. --target-macs 250e6")
        if self.target_macs is not None:
            self.target_macs = int(self.target_macs)  # the CLI takes 250e6; a MAC count is whole
        check_range("depth_tilt", self.depth_tilt, -1, 1,
                    hint="e.g. --depth-tilt 0.5 prunes the last stage 1.5x and the first 0.5x the mean share")
        check_range("round_to", self.round_to, 1)
        check_range("steps", self.steps, 1)
        check_range("finetune_epochs", self.finetune_epochs, 0)
        check_range("finetune_lr", self.finetune_lr, 0, 10, low_open=True)
        check_range("distill", self.distill_alpha, 0, 1,
                    hint="e.g. --distill 0.5 (half the fine-tune loss from the unpruned model) or 0 (labels only)")
        check_range("distill_temperature", self.distill_temperature, 0, low_open=True)
        check_range("batch_size", self.batch_size, 1)
        check_range("bn_batches", self.bn_batches, 0)
        check_range("taylor_batches", self.taylor_batches, 1)
        check_range("latency_runs", self.latency_runs, 1)
        check_range("threads", self.threads, 1)
        check_range("seed", self.seed, 0)
        return self


@dataclass
class QuantizeConfig:
    mode: QuantMode = QuantMode.static
    method: CalibMethod = CalibMethod.auto
    calibration: str | None = None  # a calibration/*.json definition; required for static and qat
    percentile: float = 99.99
    backend: QuantBackend = QuantBackend.x86  # qnnpack: the ARM engine (measured here on x86, latency aside)
    weights: WeightScheme = WeightScheme.engine  # static and qat; dynamic's fc is per-tensor (torch's dynamic qconfig)
    qat_epochs: int = 3
    qat_lr: float = 0.002
    qat_freeze_epoch: int = 1  # observers and BN statistics frozen after this many QAT epochs
    batch_size: int = 256
    sensitivity: bool = False
    keep_float: int = 0  # keep the N most sensitive layers in float (implies the sensitivity pass)
    export_onnx: bool = True  # a QDQ ONNX beside the int8 checkpoint, for the exporters
    opset: int = ONNX_OPSET
    latency_runs: int = 200
    threads: int = 1
    seed: int = 0
    tensorboard: str | None = None  # TensorBoard log folder for the QAT fine-tune (None = off)

    def validate(self) -> "QuantizeConfig":
        check_choice("backend", self.backend, QuantBackend)
        check_choice("weights", self.weights, WeightScheme)
        check_range("percentile", self.percentile, 0, 100, low_open=True)
        check_range("qat_epochs", self.qat_epochs, 0)
        check_range("qat_lr", self.qat_lr, 0, 10, low_open=True)
        check_range("qat_freeze_epoch", self.qat_freeze_epoch, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("keep_float", self.keep_float, 0)
        check_range("latency_runs", self.latency_runs, 1)
        check_range("threads", self.threads, 1)
        check_range("seed", self.seed, 0)
        return self


@dataclass
class FinetuneConfig:
    """One fine-tune as a stage runs it: cosine cycles of `cycles` epochs each at `lr`, from trained
    weights. Prune and QAT build theirs here, and `edgekit control` rebuilds the same one for the
    parent, so what a child gains from its extra training alone is measured, not credited to
    compression."""

    cycles: tuple[int, ...] = (2,)  # epochs per cosine cycle (prune: one per step; QAT: before/after freezing)
    lr: float = 0.02
    batch_size: int = 256
    distill_alpha: float = 0.0  # share of the loss distilled from the parent's logits
    distill_temperature: float = 4.0
    cpu_bf16: bool = False
    bn_batches: int = 0  # BN recalibration after each cycle, kept only if validation accuracy does not drop
    seed: int = 0
    tensorboard: str | None = None

    @property
    def epochs(self) -> int:
        return sum(self.cycles)

    def train_config(self, epochs: int) -> TrainConfig:
        return finetune_config(epochs, self.batch_size, self.lr, self.seed, cpu_bf16=self.cpu_bf16,
                               distill_alpha=self.distill_alpha, distill_temperature=self.distill_temperature,
                               tensorboard=self.tensorboard)

    @classmethod
    def of_prune(cls, config: PruneConfig) -> "FinetuneConfig":
        return cls(cycles=(config.finetune_epochs,) * config.steps if config.finetune_epochs else (),
                   lr=config.finetune_lr, batch_size=config.batch_size, distill_alpha=config.distill_alpha,
                   distill_temperature=config.distill_temperature, cpu_bf16=config.cpu_bf16,
                   bn_batches=config.bn_batches, seed=config.seed, tensorboard=config.tensorboard)

    @classmethod
    def of_qat(cls, config: QuantizeConfig) -> "FinetuneConfig":
        # At least one epoch before observers and BN freeze, the rest after them.
        before = max(1, min(config.qat_freeze_epoch, config.qat_epochs))
        after = config.qat_epochs - before
        return cls(cycles=(before, after) if after > 0 else (before,), lr=config.qat_lr,
                   batch_size=config.batch_size, seed=config.seed, tensorboard=config.tensorboard)


@dataclass
class BenchConfig:
    """How `edgekit bench` measures: the protocol recorded beside every result."""

    threads: int = 2  # intra-op threads given to every runtime (torch, ORT, TFLite)
    batches: tuple[int, ...] = (1, 8, 32, 128)  # throughput sweep
    warmup: int = 10  # untimed batch-1 calls before timing (allocators, JIT, caches)
    runs: int = 100  # at least this many timed batch-1 calls ...
    min_seconds: float = 2.0  # ... and at least this long, whichever takes longer
    # Batch-1 timing in this many alternating rounds over every row that ran, after all accuracy
    # passes, so a drift in the machine's speed lands on every row alike instead of on whichever
    # was timed during it; 1 = each row timed alone, right after its accuracy pass (rounds keep every
    # row's session or engine loaded until the end: on a board short of memory, 1 loads one at a time).
    latency_rounds: int = 5
    sweep_seconds: float = 1.0  # per batch size in the throughput sweep (at least 3 calls)
    test_limit: int | None = None  # first N test images only (quick runs); None = the full split
    eval_batch: int = 256  # batch used for the accuracy pass
    baselines: bool = False  # also make and measure the "without edgekit" int8 baselines
    baseline_dir: str = "artifacts/baselines"
    calibration: str | None = None  # calibration definition for the baselines (default: from lineage)
    data: DataConfig | None = None  # override the data recorded in the artifacts' lineage
    seed: int = 0
    diff: bool = False  # per row: images flipped against the fp32 root, and which class (edgekit.diagnose)

    def validate(self) -> "BenchConfig":
        from .errors import ConfigError

        check_range("threads", self.threads, 1, hint="e.g. --threads 2")
        if not self.batches:
            raise ConfigError("--batches names no batch size", "use e.g. --batches 1,8,32,128")
        for batch in self.batches:
            check_range("batches", batch, 1, hint="comma-separated batch sizes, e.g. --batches 1,8,32,128")
        check_range("warmup", self.warmup, 0)
        check_range("runs", self.runs, 1)
        check_range("latency_rounds", self.latency_rounds, 1, 1000, hint="e.g. --latency-rounds 5")
        check_range("min_seconds", self.min_seconds, 0, 3600, hint="e.g. --min-seconds 2")
        check_range("sweep_seconds", self.sweep_seconds, 0, 3600, hint="e.g. --sweep-seconds 1")
        check_range("test_limit", self.test_limit, 1, optional=True)
        check_range("eval_batch", self.eval_batch, 1)
        check_range("seed", self.seed, 0)
        if self.data is not None:
            self.data.validate()
        return self


@dataclass
class DiagnoseOptions:
    """The numbers `edgekit diff` and `edgekit explain` take, checked before any data is loaded."""

    limit: int | None = None  # the first N images of the split
    threads: int | None = None
    seed: int = 0
    gradcam_sample: int = 256  # diff: seeded images whose Grad-CAM maps are compared
    images: int = 16  # explain: seeded random images to draw
    indices: tuple[int, ...] = ()  # explain: these images instead

    def validate(self) -> "DiagnoseOptions":
        check_range("limit", self.limit, 1, optional=True)
        check_range("threads", self.threads, 1, optional=True)
        check_range("seed", self.seed, 0)
        check_range("gradcam_sample", self.gradcam_sample, 1, hint="e.g. --gradcam-sample 256")
        check_range("images", self.images, 1, hint="e.g. --images 16")
        for index in self.indices:
            check_range("index", index, 0, hint="image indices of the split, e.g. --index 3,17,42")
        return self
