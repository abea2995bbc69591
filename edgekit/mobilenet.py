"""CIFAR MobileNetV2, built from a ModelSpec (see edgekit.spec for what its channel counts mean).

Sandler et al. 2018, in the CIFAR form of kuangliu/pytorch-cifar: a 3x3 stride-1 stem and stride 1
in the second stage. One difference from that repository: a block adds its input back only where
the shapes already agree (stride 1, same width), as in the paper and torchvision, with no 1x1
projection shortcut where the width changes, so every residual is the plain add that int8 and
pruning handle as a coupling. Which blocks those are is read from the unpruned widths
(`spec.mobilenet_v2_residual`), so a pruned model keeps its parent's adds.

Names follow edgekit's ResNet18 where the part is the same (normalize, conv1/bn1/relu stem,
layer1..layer7 stages, avgpool/flatten/fc), so stages that look up `fc` or a last stage by name
treat both alike. ReLU6 stays ReLU6: swapping it for ReLU changes what a trained model computes.
torch has no fused Conv-BN-ReLU6, so fuse_model folds BN alone, and int8 fuses the ReLU6 with
edgekit.qrelu6 (`fusion_groups()` names the groups, `residual_adds()` the adds, for edgekit.qmodel).
"""

from __future__ import annotations

from itertools import islice

import torch
from torch import nn

from .errors import CheckpointError
from .spec import MOBILENET_V2_STAGES, Add, ModelSpec, Normalize, mobilenet_v2_blocks, mobilenet_v2_residual


class InvertedResidual(nn.Module):
    """1x1 expand (absent at expansion 1) -> 3x3 depthwise -> 1x1 linear projection, + input if `residual`."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, stride: int, expand: bool,
                 residual: bool) -> None:
        super().__init__()
        self.expand = expand
        if expand:
            self.conv1 = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden_channels)
            self.relu1 = nn.ReLU6(inplace=True)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, 3, stride, 1, groups=hidden_channels, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden_channels)
        self.relu2 = nn.ReLU6(inplace=True)
        self.conv3 = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.use_residual = residual
        if self.use_residual:
            self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x))) if self.expand else x
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        return self.add(out, x) if self.use_residual else out

    def fusion_groups(self) -> list[list[str]]:
        """conv+BN(+ReLU6) groups that run as one int8 op, relative to the block (see fuse_model for float)."""
        return ([["conv1", "bn1", "relu1"]] if self.expand else []) + [["conv2", "bn2", "relu2"], ["conv3", "bn3"]]


class MobileNetV2(nn.Module):
    # Grad-CAM's default layer (edgekit.gradcam): the head's ReLU6, the last rectified map (4x4) and the one
    # the classifier averages. Not layer7: its output is a linear bottleneck (signed, no activation) that the
    # head's 1x1 conv still mixes before the classifier sees it. torchvision's MobileNetV2 is read the same
    # way (its features[-1], the head conv + BN + ReLU6).
    gradcam_layer = "relu2"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.arch != "mobilenet_v2":
            raise CheckpointError(f"a {spec.arch} spec cannot build MobileNetV2", "build it with edgekit.model.build_model")
        try:
            spec.check()
        except ValueError as exc:
            raise CheckpointError(f"model spec does not describe a MobileNetV2 ({exc})",
                                  "the file was damaged or edited, or made for another model: re-create it") from exc
        self.spec = spec
        self.normalize = Normalize(spec.mean, spec.std)
        stem, *stage_widths, head = spec.stage_channels
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU6(inplace=True)
        shapes = iter(zip(mobilenet_v2_blocks(spec.stage_channels), spec.block_channels,
                          mobilenet_v2_residual(spec.width)))
        for stage, (expansion, _, blocks, _) in enumerate(MOBILENET_V2_STAGES):
            layer = [InvertedResidual(in_channels, hidden, out_channels, stride, expand=expansion != 1,
                                      residual=residual)
                     for (in_channels, out_channels, stride), hidden, residual in islice(shapes, blocks)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.conv2 = nn.Conv2d(stage_widths[-1], head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.relu2 = nn.ReLU6(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(head, spec.num_classes)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{index + 1}") for index in range(len(MOBILENET_V2_STAGES))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        for stage in self.stages:
            x = stage(x)
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(self.avgpool(x)))

    def fusion_groups(self) -> list[list[str]]:
        """Every conv+BN(+ReLU6) that runs as one int8 op, by module path: what the int8 model's eval
        (PTQ) and train (QAT) fusion fuse (edgekit.qrelu6 fuses the ReLU6 torch cannot)."""
        groups = [["conv1", "bn1", "relu"]]
        for name, block in self.named_modules():
            if isinstance(block, InvertedResidual):
                groups += [[f"{name}.{part}" for part in group] for group in block.fusion_groups()]
        return groups + [["conv2", "bn2", "relu2"]]

    def residual_adds(self) -> list[tuple[str, str | None]]:
        """(Add module, None: no activation follows a linear bottleneck's sum), by module path."""
        return [(f"{name}.add", None) for name, block in self.named_modules()
                if isinstance(block, InvertedResidual) and block.use_residual]

    def fuse_model(self) -> "MobileNetV2":
        """Fold conv+BN in place for float inference (each ReLU6 stays a module). Needs eval mode."""
        from torch.ao.quantization import fuse_modules

        if self.training:
            raise RuntimeError("fuse_model() folds BN statistics and must run in eval mode")
        fuse_modules(self, [group[:2] for group in self.fusion_groups()], inplace=True)
        return self
