"""An int8 file stores per-channel int8 weights compactly (float32 scales, int32 zero points
instead of torch's float64/int64) and the loader rebuilds exactly the tensors torch made."""

from __future__ import annotations

import torch

from edgekit.qmodel import PACKED_QTENSOR, pack_qtensors, unpack_qtensors

CHANNELS = 512  # ResNet18's widest layer: 8 bytes a channel saved shows past the zip's record padding


def per_channel(scales: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(CHANNELS, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    return torch.quantize_per_channel(weights, scales, torch.zeros(CHANNELS, dtype=torch.long), 0, torch.qint8)


def float32_scales() -> torch.Tensor:  # as observers compute them: float32 values held in float64
    return (torch.rand(CHANNELS, generator=torch.Generator().manual_seed(1)) * 0.05 + 0.001).double()


def test_packed_weights_rebuild_exactly_and_take_less_room(tmp_path):
    weight = per_channel(float32_scales())
    packed = pack_qtensors(weight)
    assert packed[PACKED_QTENSOR] == "qint8" and packed["int_repr"].dtype == torch.int8
    assert packed["scales"].dtype == torch.float32 and packed["zero_points"].dtype == torch.int32
    rebuilt = unpack_qtensors(packed)
    assert rebuilt.dtype == torch.qint8 and rebuilt.q_per_channel_axis() == 0
    assert torch.equal(rebuilt.int_repr(), weight.int_repr())
    assert torch.equal(rebuilt.q_per_channel_scales(), weight.q_per_channel_scales())
    assert torch.equal(rebuilt.q_per_channel_zero_points(), weight.q_per_channel_zero_points())
    torch.save({"w": weight}, tmp_path / "torch.pt")
    torch.save({"w": packed}, tmp_path / "packed.pt")
    saved = (tmp_path / "torch.pt").stat().st_size - (tmp_path / "packed.pt").stat().st_size
    assert saved >= 8 * CHANNELS - 512, saved  # 4 bytes of scale + 4 of zero point a channel, less padding
    reloaded = torch.load(tmp_path / "packed.pt", weights_only=True)["w"]
    assert torch.equal(unpack_qtensors(reloaded).int_repr(), weight.int_repr())


def test_linear_params_tuple_and_plain_values_pass_through():
    weight, bias = per_channel(float32_scales()), torch.randn(CHANNELS)
    packed = pack_qtensors((weight, bias))
    assert isinstance(packed, tuple) and PACKED_QTENSOR in packed[0] and packed[1] is bias
    rebuilt = unpack_qtensors(packed)
    assert torch.equal(rebuilt[0].int_repr(), weight.int_repr()) and rebuilt[1] is bias
    plain = torch.randn(3)
    assert pack_qtensors(plain) is plain and unpack_qtensors(plain) is plain


def test_scales_not_exact_in_float32_are_kept_as_torch_stores_them():
    weight = per_channel(torch.full((CHANNELS,), 0.1, dtype=torch.float64))  # 0.1 has no exact float32
    assert pack_qtensors(weight) is weight
