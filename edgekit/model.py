"""CIFAR ResNet18, the model builder for every architecture, and checkpoints.

build_model makes the network a ModelSpec names (ResNet18 here, MobileNetV2 in edgekit.mobilenet).
ResNet18 is the CIFAR variant (He et al. 2016, as in kuangliu/pytorch-cifar): a 3x3 stride-1 stem and no
max-pool, because 32x32 inputs cannot afford the ImageNet stem's 4x downsampling. At width 1
it has 11,173,962 parameters.

Every channel count lives in a `ModelSpec` (plain data, edgekit.spec), so a pruned model is rebuilt
from its recorded channel counts and its state dict: nothing is unpickled. Channels joined by
residual additions must agree, so a stage has one output width shared by all of its blocks (and
the stem shares stage 1's), and each block has its own inner width.

The model takes pixels scaled to [0, 1] and normalizes inside (`Normalize`), so the
normalization constants travel with the weights into every exported format, and an int8
input maps exactly onto 8-bit pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts import atomic_torch_save
from .errors import CheckpointError
from .mobilenet import InvertedResidual, MobileNetV2
# The spec and the shared layers live in edgekit.spec; named here too, where every stage imports them from.
from .spec import (ARCHITECTURES, BASE_STAGE_CHANNELS, BLOCKS_PER_STAGE, CIFAR10_MEAN, CIFAR10_STD,  # noqa: F401
                   INPUT_SIZE, Add, ModelSpec, Normalize, scaled_channels)

CHECKPOINT_FORMAT = "edgekit-checkpoint/1"
QUANTIZED_FORMAT = "edgekit-quantized/1"  # written by edgekit.qmodel; named here so every loader can tell the two apart


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.add = Add()
        self.relu2 = nn.ReLU(inplace=True)

    def fusion_groups(self) -> list[list[str]]:
        """conv+BN(+ReLU) groups torch folds into one op, relative to the block."""
        return [["conv1", "bn1", "relu1"], ["conv2", "bn2"]] + ([["downsample.0", "downsample.1"]]
                                                                if self.downsample is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, identity))


class ResNet18(nn.Module):
    # Grad-CAM's default layer (edgekit.gradcam): the last stage, whose rectified 4x4 map the classifier averages
    gradcam_layer = "layer4"

    def __init__(self, spec: ModelSpec | None = None) -> None:
        super().__init__()
        spec = spec or ModelSpec()
        if spec.arch != "resnet18":
            raise CheckpointError(f"a {spec.arch} spec cannot build ResNet18", "build it with edgekit.model.build_model")
        if len(spec.stage_channels) != 4 or len(spec.block_channels) != 4 * BLOCKS_PER_STAGE:
            raise CheckpointError("model spec has the wrong number of stages or blocks",
                                  "the file was damaged or edited, or made for another model: re-create it")
        self.spec = spec
        self.normalize = Normalize(spec.mean, spec.std)
        stem = spec.stage_channels[0]
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_channels = stem
        stages = []
        for stage, out_channels in enumerate(spec.stage_channels):
            blocks = []
            for index in range(BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and index == 0 else 1
                mid = spec.block_channels[stage * BLOCKS_PER_STAGE + index]
                blocks.append(BasicBlock(in_channels, mid, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_channels, spec.num_classes)
        # torch's default initialisation, as in the airbench and kuangliu baselines. He-normal
        # (fan_out) weights are ~2.4x larger, and behind BatchNorm a conv's effective learning rate
        # scales with 1/|w|^2: they trained ~6x slower at first, and weight decay shrinks them too
        # slowly to catch up in a short schedule. Zero-initialising each block's last BN (Goyal et al.)
        # is left out for the same reason: it is a large-batch ImageNet trick the baselines do without.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))

    def fusion_groups(self) -> list[list[str]]:
        """Every conv+BN(+ReLU) torch folds into one op, by module path: what fuse_model and the int8
        model's eval (PTQ) and train (QAT) fusion fuse. The ReLU after each residual add is fused
        with the add instead (residual_adds)."""
        groups = [["conv1", "bn1", "relu"]]
        for name, block in self.named_modules():
            if isinstance(block, BasicBlock):
                groups += [[f"{name}.{part}" for part in group] for group in block.fusion_groups()]
        return groups

    def residual_adds(self) -> list[tuple[str, str | None]]:
        """(Add module, the ReLU applied to its sum or None), by module path: the int8 model makes
        each one quantizable op (add, or add + ReLU as one kernel)."""
        return [(f"{name}.add", f"{name}.relu2") for name, block in self.named_modules() if isinstance(block, BasicBlock)]

    def fuse_model(self) -> "ResNet18":
        """Fold conv+BN(+ReLU) in place for inference or eager-mode quantization. Needs eval mode."""
        from torch.ao.quantization import fuse_modules

        if self.training:
            raise RuntimeError("fuse_model() folds BN statistics and must run in eval mode")
        fuse_modules(self, self.fusion_groups(), inplace=True)
        return self


Classifier = ResNet18 | MobileNetV2  # what build_model makes: a network edgekit rebuilds from its ModelSpec
_BUILDERS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}


def build_model(spec: ModelSpec | None = None, seed: int | None = None) -> Classifier:
    """A fresh model of the spec's architecture; with `seed`, its initial weights are that seed's
    (runs reproduce from the seed alone)."""
    spec = spec or ModelSpec()
    if spec.arch not in _BUILDERS:
        raise CheckpointError(f"unknown architecture '{spec.arch}'",
                              f"edgekit builds {', '.join(ARCHITECTURES)}: the file was made by something else")
    if seed is not None:
        torch.manual_seed(seed)
    return _BUILDERS[spec.arch](spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = 32) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


# ---- checkpoints: tensors and plain data only, loaded with weights_only=True -----------------


@dataclass
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    classes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # plain data: history, metrics, training state

    def build(self) -> Classifier:
        model = build_model(self.spec)
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()})
        except RuntimeError as exc:
            raise CheckpointError("checkpoint weights do not fit its recorded model shape",
                                  "the file is damaged or was edited; re-create it") from exc
        return model.eval()


def save_checkpoint(path: str | Path, model: Classifier, classes: list[str], extra: dict[str, Any] | None = None,
                    half: bool = False) -> Path:
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": model.spec.to_dict(), "classes": list(classes),
               "state_dict": state, "extra": extra or {}}
    atomic_torch_save(payload, path)
    return Path(path)


_KINDS = {CHECKPOINT_FORMAT: ("float checkpoint", "edgekit train/prune"),
          QUANTIZED_FORMAT: ("int8 model", "edgekit quantize")}


def read_payload(path: str | Path, expect: str = CHECKPOINT_FORMAT) -> dict[str, Any]:
    """An edgekit torch file's payload (weights_only=True), checked before any field is used.

    Every way it can be wrong is one CheckpointError that says which: missing, a folder, empty,
    truncated, not a torch file, another kind of edgekit file (a float checkpoint where an int8
    model is meant, or the reverse), or an edgekit file with an entry missing or of the wrong type.
    A file edgekit wrote is never called "not an edgekit file"."""
    return check_payload(load_payload(path, expect), path, expect)


def load_payload(path: str | Path, expect: str = CHECKPOINT_FORMAT) -> Any:
    """The one torch.load of an edgekit file, unchecked: read_payload's first half, for a reader that
    decides from the payload itself which kind of file it holds (edgekit.formats.source). A file
    that cannot be read at all is refused in the words of the kind `expect` names."""
    path = Path(path)
    kind, maker = _KINDS[expect]
    if not path.exists():
        raise CheckpointError(f"{kind} not found: {path}", f"check the path, or make one with `{maker}`")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a {kind} file", "pass the .pt file itself")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): cut off while it was written or copied",
                              f"copy it again, or re-create it with `{maker}`")
    try:
        payload = load_plain(path)
    except Exception as exc:  # truncated zip, random bytes, or a pickle that is not plain data
        if head == b"PK\x03\x04":  # torch's zip container: a torch file, damaged
            raise CheckpointError(f"cannot read {path}: the torch file is truncated or corrupt",
                                  f"copy it again, or re-create it with `{maker}`") from exc
        raise CheckpointError(f"{path} is not a torch file (no .pt written by edgekit starts like it)",
                              f"pass a .pt file written by `{maker}`") from exc
    return payload


def load_plain(path: str | Path) -> Any:
    """torch.load of plain data only (weights_only: nothing is unpickled), on the CPU.

    torch's own rebuild of a quantized tensor (a dynamic int8 file's) reads the deprecated
    TypedStorage and warns: about torch's code, not the file, so the warning is not passed on, and
    where warnings are errors (PYTHONWARNINGS=error) a sound file is not called corrupt."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def check_payload(payload: Any, path: str | Path, expect: str = CHECKPOINT_FORMAT) -> dict[str, Any]:
    """A loaded payload checked to be an edgekit file of the kind `expect` names (read_payload's second half)."""
    kind, maker = _KINDS[expect]
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != expect:
        if found in _KINDS:
            other, _ = _KINDS[found]
            raise CheckpointError(f"{path} is an edgekit {other}, and this step needs a {kind}",
                                  f"pass a file written by `{maker}`"
                                  + (" (an int8 model's manifest names its float parent)" if found == QUANTIZED_FORMAT else ""))
        what = (("tensors with no model shape (a bare state_dict?)" if "spec" not in payload else "a model")
                if isinstance(payload, dict) else f"a {type(payload).__name__}")
        # no "not an edgekit file": an edgekit file whose format entry was lost reads the same
        raise CheckpointError(f"{path} holds {what} without edgekit's format entry, so it cannot be read as a {kind}",
                              f"edgekit rebuilds a model from the shape its files record: make one with `{maker}`")
    required = {"spec": dict, "state_dict": dict, **({"recipe": dict} if expect == QUANTIZED_FORMAT else {})}
    optional = {"classes": list, "extra": dict, "state_metadata": dict}
    for key, kind_of in (*required.items(), *optional.items()):
        if (key in required or key in payload) and not isinstance(payload.get(key), kind_of):
            state = "has no" if key not in payload else f"has a {type(payload[key]).__name__} as its"
            raise CheckpointError(f"{path} is an edgekit {kind} that {state} '{key}' entry: damaged or edited",
                                  f"re-create it with `{maker}`")
    try:
        ModelSpec.from_dict(payload["spec"]).check()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} records a model shape edgekit cannot build ({exc})",
                              f"the file is damaged or was edited; re-create it with `{maker}`") from exc
    return payload


def load_checkpoint(path: str | Path, expect: ModelSpec | None = None) -> Checkpoint:
    """Load safely. With `expect`, refuse a checkpoint of another architecture, width or class count."""
    return checkpoint_from_payload(read_payload(path), path, expect)


def checkpoint_from_payload(payload: dict[str, Any], path: str | Path, expect: ModelSpec | None = None) -> Checkpoint:
    """A checked float-checkpoint payload (read_payload) as a Checkpoint; its tensors are the payload's own."""
    path = Path(path)
    spec = ModelSpec.from_dict(payload["spec"])
    if expect is not None:
        for name in ("arch", "num_classes", "stage_channels", "block_channels"):
            if getattr(spec, name) != getattr(expect, name):
                raise CheckpointError(
                    f"checkpoint {path.name} has {name}={getattr(spec, name)} but the model here expects "
                    f"{getattr(expect, name)}",
                    "pass the matching --width (the class count comes from the data), or the checkpoint made "
                    "for this model")
    return Checkpoint(spec=spec, state_dict=payload["state_dict"], classes=list(payload.get("classes", [])),
                      extra=dict(payload.get("extra", {})))
