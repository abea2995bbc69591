"""Conv + BN + ReLU6 as one int8 op: the fusion torch's eager quantization lacks, for MobileNetV2.

A leaf beside qengine.py (torch only), read by edgekit.qmodel.

torch fuses Conv+BN+ReLU but not Conv+BN+ReLU6. Left apart, ReLU6 is its own int8 op
(nnq.ReLU6, a clamp that keeps its input's grid): the conv's output grid must then span the
conv's signed range, so after the clamp only its upper part carries codes, and the QDQ ONNX
needs a float Clip between every conv and its Quantize. Fused here, the conv's output is
observed after the ReLU6, so its grid spans [0, hi] with hi <= 6 and zero point 0: the int8
conv kernel's clamp of its output to that grid *is* ReLU6 (below 0 is code 0, above hi the top
code, and hi <= 6), computed by torch's own conv2d_relu kernel with no extra op. It is exact,
not an approximation: a value above hi is clamped at hi here as the separate clamp's grid
would clamp it too. Parity against the separate clamp, measured: see edgekit/qmodel.py.

Three module kinds follow torch's own for ReLU, with ReLU6 in place of ReLU:
- float: ConvReLU6 (BN folded, eval fusion for PTQ) and ConvBnReLU6 (BN apart, for QAT);
- QAT: QATConvReLU6 and QATConvBnReLU6, ReLU6 applied before the activation fake-quant;
- int8: QuantizedConvReLU6, torch's quantized ConvReLU2d made from either (its BN folded).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn
from torch.ao.nn import intrinsic as nni
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.nn.intrinsic import quantized as nniq
from torch.nn.utils.fusion import fuse_conv_bn_eval

PATTERN = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6)


class ConvReLU6(nni._FusedModule):
    """Conv (BN folded in) then ReLU6, one module: quantization observes its output after the ReLU6."""

    def __init__(self, conv: nn.Conv2d, relu6: nn.ReLU6) -> None:
        super().__init__(conv, relu6)


class ConvBnReLU6(nni._FusedModule):
    """Conv, BN and ReLU6 as one module for QAT (BN folded during training, as torch's ConvBnReLU2d)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: nn.ReLU6) -> None:
        super().__init__(conv, bn, relu6)


class QATConvReLU6(nniqat.ConvReLU2d):
    _FLOAT_MODULE = ConvReLU6
    _FLOAT_RELU_MODULE = nn.ReLU6

    def forward(self, input):
        return F.relu6(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class QATConvBnReLU6(nniqat.ConvBnReLU2d):
    _FLOAT_MODULE = ConvBnReLU6
    _FLOAT_RELU_MODULE = nn.ReLU6
    _FUSED_FLOAT_MODULE = ConvReLU6

    def forward(self, input):
        return F.relu6(self._forward(input))


class QuantizedConvReLU6(nniq.ConvReLU2d):
    """torch's int8 conv2d_relu whose output grid was observed after the ReLU6 (so it ends at <= 6)."""

    _FLOAT_MODULE = ConvReLU6
    _NNI_CONV_RELU_MODULE = ConvReLU6  # from a float ConvReLU6: its conv
    _NNIQAT_CONV_BN_MODULE = QATConvBnReLU6  # from QAT: BN folded into the weights first

    def _get_name(self) -> str:
        return "QuantizedConvReLU6"


class QDQConvReLU6(QATConvReLU6):
    """The fake-quant twin's form (edgekit.qmodel.int8_as_fake_quant), for the QDQ ONNX graph: the
    conv alone, then `qdq_relu6` as its activation fake-quant.

    In torch the twin computes what the int8 model does (the grid's clamp is the ReLU6). In ONNX
    the grid spans 8 bits, not torch's 7 (see formats/onnx.py, _FrozenFakeQuant), so that clamp
    would end at twice the grid's top: Quantize -> Dequantize -> Clip(0, 6) -> Quantize keeps the
    6, and leaves Conv -> Quantize whole, which ONNX Runtime fuses into an integer QLinearConv
    (a Clip between Conv and Quantize stopped that fusion: 35 of 52 convs ran in float)."""

    def forward(self, input):
        return self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias)


class QDQReLU6(nn.Module):
    """fake-quant -> ReLU6 -> the same fake-quant: the activation fake-quant of a QDQConvReLU6."""

    def __init__(self, fake_quant: nn.Module) -> None:
        super().__init__()
        self.fake_quant = fake_quant

    def forward(self, x):
        return self.fake_quant(F.relu6(self.fake_quant(x)))


def wrap_twin_fake_quants(model: nn.Module) -> None:
    """Each QDQConvReLU6's activation fake-quant, its grid already set, as QDQReLU6 (in place)."""
    for module in model.modules():
        if isinstance(module, QDQConvReLU6) and not isinstance(module.activation_post_process, QDQReLU6):
            module.activation_post_process = QDQReLU6(module.activation_post_process)


def fuse_conv_bn_relu6(is_qat: bool, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: nn.ReLU6) -> nn.Module:
    """The fuser for PATTERN (torch's fuser signature): BN folded for PTQ, kept apart for QAT."""
    if is_qat:
        return ConvBnReLU6(conv, bn, relu6)
    return ConvReLU6(fuse_conv_bn_eval(conv, bn), relu6)


def fold_bn(fused: nn.Module) -> nn.Module | None:
    """A float ConvBnReLU6 (a QAT layer kept float) with its BN folded, as eval fusion makes it; None for others."""
    if isinstance(fused, ConvBnReLU6):
        return ConvReLU6(fuse_conv_bn_eval(fused[0].eval(), fused[1].eval()), fused[2])
    return None


def qat_mapping(base: dict[Any, Any], twin: bool = False) -> dict[Any, Any]:
    """torch's QAT module mapping and edgekit's; `twin`: the fake-quant twin's QDQ form of a fused ReLU6."""
    return {**base, ConvReLU6: QDQConvReLU6 if twin else QATConvReLU6, ConvBnReLU6: QATConvBnReLU6}


def int8_mapping(base: dict[Any, Any]) -> dict[Any, Any]:
    return {**base, ConvReLU6: QuantizedConvReLU6, QATConvReLU6: QuantizedConvReLU6,
            QATConvBnReLU6: QuantizedConvReLU6}
