"""Grad-CAM (Selvaraju et al. 2017) for edgekit's torch models, and the models it can look inside.

A map says where in the image the evidence for one class came from: the activations of a
layer, weighted per channel by the spatial mean of the class score's gradient, summed over
channels, ReLU'd, upsampled to the input and scaled to [0, 1]. The default layer is the one the
network names as its `gradcam_layer`: the last rectified feature map, the one the classifier
averages and reads directly (ResNet18's `layer4`, MobileNetV2's head `relu2`; 4x4 cells at 32x32
input, coarse). Any module with a spatial output can be named instead.

Torch-runnable artifacts are fp32 and pruned checkpoints, and static/QAT int8 models through
their dequantized float twin (`quantize.dequantized_checkpoint`: the int8 weights, BN folded,
activations in float). The twin's map is the map of the int8 weights, not of the int8
activation rounding, which only an exact int8 backward could show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, EdgekitError
from .timing import batch_slices



def torch_model_for(path: Path) -> tuple[nn.Module | None, str]:
    """(model in eval mode, what it is) for a torch-runnable artifact, else (None, why not)."""
    from .formats import SOURCE_FORMAT, format_of_path
    from .model import load_checkpoint
    from .qmodel import dequantized_checkpoint, is_quantized_artifact

    path = Path(path)
    try:
        if format_of_path(path) is not SOURCE_FORMAT:
            return None, f"{path.name} is a {format_of_path(path).name} file; Grad-CAM needs a torch model"
        if is_quantized_artifact(path):
            return dequantized_checkpoint(path).build(), "int8 through its dequantized float twin"
        return load_checkpoint(path).build(), "float checkpoint"
    except EdgekitError as exc:  # e.g. a dynamic-int8 file, which has no dequantized twin
        return None, exc.message


def spatial_layers(model: nn.Module, size: int = 32) -> list[str]:
    """Names of the modules whose output is a [N, C, H, W] map, found by one dry forward pass."""
    names: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and name not in names:
                names.append(name)
        hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return names


def layer_name(model: nn.Module, layer: str | None) -> str:
    """`layer`, or the model's own default (its `gradcam_layer`), checked to have a spatial output."""
    valid = spatial_layers(model)
    name = layer or getattr(model, "gradcam_layer", None)
    if name is None:
        raise ConfigError(f"{type(model).__name__} names no default Grad-CAM layer", "pass --layer, one of: "
                          + ", ".join(valid))
    if name not in valid:
        raise ConfigError(f"--layer '{name}' is not a module with a spatial output in this model",
                          "valid names: " + ", ".join(valid))
    return name


def resolve_layer(model: nn.Module, layer: str | None) -> nn.Module:
    return model.get_submodule(layer_name(model, layer))


def gradcam(model: nn.Module, images: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor,
            layer: str | None = None, batch_size: int = 64, upsample: bool = True) -> np.ndarray:
    """Grad-CAM maps [N, H, W] in [0, 1] for each image's target class (a map with no positive
    evidence anywhere is all zeros). `upsample=False` keeps the layer's own resolution."""
    module = resolve_layer(model, layer)
    # In-place activations (ReLU, ReLU6) would overwrite the captured activation (and its autograd
    # version) after the hook.
    inplace = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.Hardtanh)) and m.inplace]
    for m in inplace:
        m.inplace = False
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["activation"] = output

    hook = module.register_forward_hook(keep)
    images = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    maps = []
    try:
        model.eval()
        with torch.enable_grad():
            for rows in batch_slices(len(images), batch_size):
                x = images[rows]
                logits = model(x)
                model.zero_grad(set_to_none=True)
                logits.gather(1, targets[rows, None]).sum().backward()
                activation = captured["activation"]
                weights = activation.grad.mean(dim=(2, 3), keepdim=True)
                cam = torch.relu((weights * activation).sum(1, keepdim=True)).detach()
                if upsample:
                    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
                peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                maps.append((cam / peak).squeeze(1).numpy())
    finally:
        hook.remove()
        for m in inplace:
            m.inplace = True
        model.zero_grad(set_to_none=True)
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[-2:]), np.float32)


def map_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of maps ([N, H, W] each); NaN where either map is constant."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 1e-12, (a * b).sum(1) / norms, np.nan)
