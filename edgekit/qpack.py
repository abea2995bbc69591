"""Quantized tensors as an edgekit int8 file stores them: int8 codes with float32 scales, no pickle.

A leaf under edgekit.qmodel (the int8 file format), which saves and loads through it.
"""

from __future__ import annotations

from typing import Any

import torch

# torch pickles a per-channel quantized tensor with float64 scales and int64 zero points: 16 bytes
# a channel beside 1 byte a weight (77 KB of ResNet18's 11.3 MB). Observers compute scales in
# float32, so float32 scales and int32 zero points hold the same numbers; a tensor whose scales
# are not exact in float32 is stored as torch would.
PACKED_QTENSOR = "edgekit-qtensor"


def pack_qtensors(value: Any) -> Any:
    if isinstance(value, tuple):  # a quantized Linear's packed params: (weight, bias)
        return tuple(pack_qtensors(item) for item in value)
    if not (isinstance(value, torch.Tensor) and value.is_quantized
            and value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)):
        return value
    scales = value.q_per_channel_scales()
    zero_points = value.q_per_channel_zero_points()
    if not (torch.equal(scales.float().double(), scales) and torch.equal(zero_points.int().long(), zero_points)):
        return value
    return {PACKED_QTENSOR: str(value.dtype).removeprefix("torch."), "int_repr": value.int_repr(),
            "scales": scales.float(), "zero_points": zero_points.int(), "axis": value.q_per_channel_axis()}


def unpack_qtensors(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(unpack_qtensors(item) for item in value)
    if not (isinstance(value, dict) and PACKED_QTENSOR in value):
        return value
    return torch._make_per_channel_quantized_tensor(value["int_repr"], value["scales"].double(),
                                                    value["zero_points"].long(), int(value["axis"]))
