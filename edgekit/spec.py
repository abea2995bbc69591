"""What a network looks like, as plain data: the architectures edgekit builds and their channel counts.

A `ModelSpec` names the architecture and every channel count, so a pruned model is rebuilt from its
recorded widths and its state dict: nothing is unpickled. Both architectures read the same two
fields, each in its own way:

- resnet18: `stage_channels` holds the four stage widths (the stem shares stage 1's, because
  residual additions couple them); `block_channels` each BasicBlock's inner width (8 blocks).
- mobilenet_v2: `stage_channels` holds the stem, the seven stages' output widths and the 1x1 head
  (9 numbers); `block_channels` each inverted-residual block's expanded width (17 blocks). The
  first block has no expansion, its depthwise conv runs on the stem's channels, so its entry
  equals the stem's.

The networks themselves live in edgekit.model (ResNet18) and edgekit.mobilenet (MobileNetV2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .config import Arch

INPUT_SIZE = 32  # CIFAR images, height = width
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
ARCHITECTURES = tuple(arch.value for arch in Arch)

# ResNet18 (He et al. 2016, CIFAR variant): four stages of two BasicBlocks.
BASE_STAGE_CHANNELS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2

# MobileNetV2 (Sandler et al. 2018) in its CIFAR form, as in kuangliu/pytorch-cifar: a stride-1
# stem and stride 1 in the second stage, so 32x32 inputs end at 4x4 before the head.
# (expansion t, output channels, blocks, first block's stride), one row a stage.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_V2_STEM = 32
MOBILENET_V2_HEAD = 1280


def scaled_channels(base: int, width: float, multiple: int = 8) -> int:
    return max(multiple, int(math.ceil(base * width / multiple)) * multiple)


def mobilenet_v2_blocks(stage_channels: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(input width, output width, stride) of each inverted-residual block, in order."""
    shapes = []
    in_channels = stage_channels[0]
    for (_, _, blocks, stride), out_channels in zip(MOBILENET_V2_STAGES, stage_channels[1:-1]):
        for index in range(blocks):
            shapes.append((in_channels, out_channels, stride if index == 0 else 1))
            in_channels = out_channels
    return shapes


def mobilenet_v2_block_inputs(stage_channels: tuple[int, ...]) -> list[int]:
    """Each inverted-residual block's input width, in order (stem first, then each stage's output)."""
    return [in_channels for in_channels, _, _ in mobilenet_v2_blocks(stage_channels)]


def mobilenet_v2_residual(width: float) -> list[bool]:
    """Which blocks add their input back: those where the *unpruned* network's shapes agree (stride 1,
    same width). It is topology, fixed by the width multiplier: pruning removes channels, never an
    add, so a pruned first block whose input and output widths happen to meet still has none (and a
    residual block's two widths stay equal, which ModelSpec.check enforces)."""
    stages, _ = _mobilenet_v2_widths(width)
    return [stride == 1 and a == b for a, b, stride in mobilenet_v2_blocks(stages)]


def _resnet18_widths(width: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    stages = tuple(scaled_channels(c, width) if width != 1.0 else c for c in BASE_STAGE_CHANNELS)
    return stages, tuple(c for c in stages for _ in range(BLOCKS_PER_STAGE))


def _mobilenet_v2_widths(width: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # As torchvision: every width scales, except that the head never narrows below 1280.
    stages = (scaled_channels(MOBILENET_V2_STEM, width),
              *(scaled_channels(c, width) for _, c, _, _ in MOBILENET_V2_STAGES),
              scaled_channels(MOBILENET_V2_HEAD, max(1.0, width)))
    expansions = [t for t, _, blocks, _ in MOBILENET_V2_STAGES for _ in range(blocks)]
    hidden = tuple(c * t for c, t in zip(mobilenet_v2_block_inputs(stages), expansions))
    return stages, hidden


_WIDTHS = {"resnet18": _resnet18_widths, "mobilenet_v2": _mobilenet_v2_widths}
# What `stage_channels` lists, in a few words (for `edgekit info`; the module doc says more).
STAGE_CHANNELS_MEANING = {"resnet18": "stages 1-4; the stem shares stage 1's",
                          "mobilenet_v2": "stem, stages 1-7, 1x1 head"}
_SHAPE_LENGTHS = {"resnet18": (len(BASE_STAGE_CHANNELS), len(BASE_STAGE_CHANNELS) * BLOCKS_PER_STAGE),
                  "mobilenet_v2": (len(MOBILENET_V2_STAGES) + 2, sum(b for _, _, b, _ in MOBILENET_V2_STAGES))}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network's shape: plain data, stored in checkpoints."""

    arch: str = "resnet18"
    num_classes: int = 10
    stage_channels: tuple[int, ...] = BASE_STAGE_CHANNELS
    block_channels: tuple[int, ...] = tuple(c for c in BASE_STAGE_CHANNELS for _ in range(BLOCKS_PER_STAGE))
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    width: float = 1.0

    @classmethod
    def from_width(cls, width: float = 1.0, num_classes: int = 10,
                   mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD,
                   arch: str = "resnet18") -> "ModelSpec":
        from .errors import ConfigError

        arch = getattr(arch, "value", arch)  # Arch.resnet18 -> "resnet18": specs hold plain data only
        if width <= 0:
            raise ConfigError(f"width multiplier must be positive, got {width}", "use e.g. --width 1.0 or 0.25")
        if arch not in _WIDTHS:
            raise ConfigError(f"unknown architecture '{arch}'", f"pass --arch {' or '.join(ARCHITECTURES)}")
        stages, blocks = _WIDTHS[arch](width)
        return cls(arch=arch, num_classes=num_classes, stage_channels=stages, block_channels=blocks,
                   mean=tuple(mean), std=tuple(std), width=width)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def check(self) -> None:
        """A shape build_model can make (ValueError otherwise): for specs read from files."""
        if self.arch not in _SHAPE_LENGTHS:
            raise ValueError(f"unknown architecture {self.arch!r} (edgekit builds {', '.join(ARCHITECTURES)})")
        stages, blocks = _SHAPE_LENGTHS[self.arch]
        counts = (*self.stage_channels, *self.block_channels, self.num_classes)
        if (len(self.stage_channels) != stages or len(self.block_channels) != blocks
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts)
                or len(self.mean) != 3 or len(self.std) != 3):
            raise ValueError(f"{self.arch}: stage_channels {self.stage_channels}, block_channels "
                             f"{self.block_channels}, num_classes {self.num_classes}")
        if self.arch == "mobilenet_v2":
            if self.block_channels[0] != self.stage_channels[0]:
                raise ValueError(f"mobilenet_v2: the first block's width {self.block_channels[0]} must equal the "
                                 f"stem's {self.stage_channels[0]} (its depthwise conv runs on the stem's channels)")
            shapes = mobilenet_v2_blocks(self.stage_channels)
            for index, ((a, b, _), residual) in enumerate(zip(shapes, mobilenet_v2_residual(self.width))):
                if residual and a != b:
                    raise ValueError(f"mobilenet_v2: block {index} adds its input back, so its input width {a} "
                                     f"must equal its output width {b}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image as the network takes it, CHW (CIFAR's 32x32; mean/std say how many channels)."""
        return (len(self.mean), INPUT_SIZE, INPUT_SIZE)

    @property
    def is_pruned(self) -> bool:
        return self != ModelSpec.from_width(self.width, self.num_classes, self.mean, self.std, self.arch)


class Normalize(nn.Module):
    """(x - mean) / std as one per-channel affine op that every exporter maps to Mul+Add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / torch.tensor(std).view(1, -1, 1, 1))
        self.register_buffer("shift", -torch.tensor(mean).view(1, -1, 1, 1) / torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Add(nn.Module):
    """The residual add as a module, so quantization can observe and replace it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b
