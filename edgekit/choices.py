"""The options' vocabulary: every named choice (an Enum) and the range and choice checks each
stage's config validates with, so a choice and its message are written once. edgekit.config
holds the configs built from them (and re-exports these names for its callers)."""

from __future__ import annotations

import math
from enum import Enum


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
    swa = "swa"  # stochastic weight averaging: the mean of per-epoch snapshots after --swa-start


class Split(str, Enum):
    test = "test"  # for reporting only
    val = "val"  # carved from train: where choices are made


class Tta(str, Enum):
    """Test-time augmentation for `edgekit eval`: the logits of several views of each image averaged."""

    none = "none"
    flip = "flip"  # the image and its mirror (2 forward passes)
    flip_translate = "flip-translate"  # and both mirrored again after a 1-px shift up-left and down-right (6)


class Arch(str, Enum):
    """The networks edgekit builds from a ModelSpec (edgekit.spec says what their channel counts mean)."""

    resnet18 = "resnet18"
    mobilenet_v2 = "mobilenet_v2"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# The largest value any numeric option takes: what a C int holds (torch's thread count, ONNX dims);
# a bigger one is a typo, and refusing it is cheaper than the overflow or hours-long run it would start.
CEILING = 2**31 - 1
# The ONNX opset every export and QDQ file is written at, and the oldest edgekit's graphs need.
ONNX_OPSET = 17


def check_range(flag: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False,
                optional: bool = False, hint: str = "") -> None:
    """One numeric option: finite and inside [low, high] (an open end excludes the bound), or None if optional.

    Every stage's config calls this from its `validate()`, so a range is written once, with the
    range in the message."""
    from .errors import ConfigError

    if value is None and optional:
        return
    if high is None:  # no option means anything past int32 (thread counts, batch sizes, seconds ...)
        high = CEILING
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    span = f"{left}{'-inf' if low is None else low}, {high}{right}"
    bad = (value is None or isinstance(value, bool) or not isinstance(value, (int, float))
           or not math.isfinite(value)
           or (low is not None and (value <= low if low_open else value < low))
           or (high is not None and (value >= high if high_open else value > high)))
    if bad:
        raise ConfigError(f"--{flag.replace('_', '-')} must be a finite number in {span}, got {value}",
                          hint or f"pass a value in {span}" + (" or leave it out" if optional else ""))


class Importance(str, Enum):
    l1 = "l1"  # |w| summed over the channel's group (Torch-Pruning MagnitudeImportance p=1)
    l2 = "l2"
    bn = "bn"  # BN scale |gamma|
    taylor = "taylor"  # |w * dL/dw|, gradients from a few training batches


class QuantMode(str, Enum):
    dynamic = "dynamic"
    static = "static"
    qat = "qat"


class QuantBackend(str, Enum):
    """torch's int8 engines edgekit quantizes for: each has its own qconfig, fusions and kernels,
    and an int8 file runs correctly only under the engine it was made for (edgekit.qmodel)."""

    x86 = "x86"  # the x86 default (fbgemm + oneDNN kernels): 7-bit activations (reduce_range), per-channel weights
    fbgemm = "fbgemm"  # fbgemm alone: the same qconfig as x86
    qnnpack = "qnnpack"  # the ARM engine (PyTorch Mobile): full 8-bit activations, per-tensor weights


class WeightScheme(str, Enum):
    """How int8 weights are scaled: the engine's own choice, one scale per output channel, or one per tensor."""

    engine = "engine"  # x86/fbgemm: per-channel; qnnpack: per-tensor (torch's qconfig for each engine)
    per_channel = "per-channel"
    per_tensor = "per-tensor"  # for comparison: a coarser grid where channels' ranges differ (depthwise convs)


def check_choice(flag: str, value, choices: type[Enum]) -> None:
    """One option that takes a name from `choices` (an Enum), with the choices in the message."""
    from .errors import ConfigError

    names = [c.value for c in choices]
    if (value.value if isinstance(value, choices) else value) not in names:
        raise ConfigError(f"--{flag.replace('_', '-')} must be one of {', '.join(names)}, got {value!r}",
                          f"pass --{flag.replace('_', '-')} {names[0]} (or another of the above)")


class CalibMethod(str, Enum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"  # KL-divergence (torch HistogramObserver)
    mse = "mse"
    auto = "auto"  # try each, keep the best on the validation split
