"""A Keras twin of edgekit's networks (ResNet18, MobileNetV2), built from a checkpoint's ModelSpec,
torch weights copied in.

Why a twin, and not a converter (this is the paragraph the README quotes):

    TFLite and SavedModel files are made from a Keras twin of the network rather than by
    converting the ONNX graph or the torch module. The twin is built from the checkpoint's
    ModelSpec, so pruned models with irregular channel counts come out right, and the torch
    weights are copied in (conv OIHW -> HWIO, BatchNorm folded into the conv in float64, the
    model's Normalize kept as the first layer). It runs NHWC throughout, which is TFLite's native
    layout, so the converted file has no Transpose ops, and its fp32 .tflite matches torch
    to about 1e-7 (ResNet18) to 1e-5 (MobileNetV2) max-abs on the logits (tests hold both to
    1e-4, pruned shapes included). TensorFlow's own converter then writes fp32, fp16 and
    full-integer int8 files with every op, residual adds and depthwise convs included, in int8.
    The alternatives were tried and rejected: onnx2tf pins older numpy/onnx than edgekit needs
    and downloads calibration data from the internet by default; litert-torch (ai-edge-torch)
    pulls in jax, and its int8 output left the residual adds in float. The cost of the twin is
    that it knows only the architectures it has a builder for (`_FEATURES`): a new one needs
    its own (30 to 40 lines here).

Padding: torch pads a 3x3 stride-2 convolution by one pixel on every side; Keras 'same' pads
an even input only at the bottom/right. So stride-2 convolutions, depthwise ones too, get an
explicit ZeroPadding2D(1) and 'valid' padding. Stride-1 'same' is already symmetric.

MobileNetV2: a depthwise conv is a DepthwiseConv2D (torch keeps it as a grouped Conv2d whose
weight is [C, 1, kH, kW]), so TFLite writes DEPTHWISE_CONV_2D with per-channel int8 weights.
ReLU6 is ReLU(max_value=6), which lowers to tf.nn.relu6 and is fused into the conv before it
(a clip would leave MINIMUM/MAXIMUM ops behind).

TensorFlow is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError, install_hint
from ..model import BLOCKS_PER_STAGE, Checkpoint, ModelSpec

BN_EPS = 1e-5  # torch BatchNorm2d's default; edgekit never changes it


def tensorflow_missing(what: str) -> str | None:
    """Why `what` cannot run here (TensorFlow not installed), or None."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        return f"{what} needs TensorFlow, which is not installed ({install_hint('tflite')})"
    return None


def require_tensorflow(what: str) -> Any:
    if tensorflow_missing(what) is not None:
        from ..errors import missing_dependency

        raise missing_dependency("tensorflow", "tflite", what)
    return import_tensorflow()


def import_tensorflow() -> Any:
    """Import TensorFlow quietly (its C++ start-up logs are noise on every CLI run)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch  # noqa: F401  - torch before TensorFlow: the other order has segfaulted here

    import tensorflow as tf

    return tf


def _fold(state: dict[str, np.ndarray], conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (OIHW) and BN statistics -> the folded OIHW weight and bias, computed in float64."""
    weight = state[f"{conv}.weight"].astype(np.float64)
    gamma = state[f"{bn}.weight"].astype(np.float64)
    beta = state[f"{bn}.bias"].astype(np.float64)
    mean = state[f"{bn}.running_mean"].astype(np.float64)
    var = state[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    return weight * scale[:, None, None, None], beta - mean * scale


class _TwinLayers:
    """Keras layers carrying a checkpoint's weights, named as the torch modules they copy."""

    def __init__(self, keras: Any, state: dict[str, np.ndarray]) -> None:
        self.layers = keras.layers
        self.state = state

    def conv_bn(self, x: Any, conv: str, bn: str, stride: int, activation: str | None = None,
                depthwise: bool = False) -> Any:
        """conv + BN folded into one Conv2D (or DepthwiseConv2D), torch's padding kept."""
        weight, bias = _fold(self.state, conv, bn)
        size = weight.shape[2]
        padding = "same"
        if stride != 1 and size > 1:
            x = self.layers.ZeroPadding2D(size // 2, name=f"{conv}.pad")(x)
            padding = "valid"
        if depthwise:
            # torch's depthwise weight is [C, 1, kH, kW] (one filter per channel); Keras wants
            # [kH, kW, C, depth_multiplier=1].
            kernel = weight.transpose(2, 3, 0, 1)
            layer = self.layers.DepthwiseConv2D(size, strides=stride, padding=padding, use_bias=True,
                                                activation=activation, name=conv)
        else:
            kernel = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            layer = self.layers.Conv2D(kernel.shape[3], size, strides=stride, padding=padding, use_bias=True,
                                       activation=activation, name=conv)
        x = layer(x)
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        return x

    def relu6(self, x: Any, name: str) -> Any:
        # ReLU(max_value=6) lowers to tf.nn.relu6, which the converter fuses into the conv before it
        return self.layers.ReLU(max_value=6.0, name=name)(x)


def _resnet18_features(twin: _TwinLayers, x: Any, spec: ModelSpec) -> Any:
    layers = twin.layers
    x = twin.conv_bn(x, "conv1", "bn1", 1, activation="relu")
    in_channels = spec.stage_channels[0]
    for stage, out_channels in enumerate(spec.stage_channels):
        for index in range(BLOCKS_PER_STAGE):
            stride = 2 if stage > 0 and index == 0 else 1
            prefix = f"layer{stage + 1}.{index}"
            identity = x
            if stride != 1 or in_channels != out_channels:
                identity = twin.conv_bn(x, f"{prefix}.downsample.0", f"{prefix}.downsample.1", stride)
            out = twin.conv_bn(x, f"{prefix}.conv1", f"{prefix}.bn1", stride, activation="relu")
            out = twin.conv_bn(out, f"{prefix}.conv2", f"{prefix}.bn2", 1)
            x = layers.ReLU(name=f"{prefix}.relu2")(layers.Add(name=f"{prefix}.add")([out, identity]))
            in_channels = out_channels
    return x


def _mobilenet_v2_features(twin: _TwinLayers, x: Any, spec: ModelSpec) -> Any:
    import torch

    from ..mobilenet import InvertedResidual
    from ..model import build_model

    # The torch network's own layout (which blocks expand, their strides, which add their input
    # back), read from an empty copy on the meta device: no weights, no draw from torch's RNG.
    with torch.device("meta"):
        structure = build_model(spec)
    x = twin.relu6(twin.conv_bn(x, "conv1", "bn1", 1), "relu")
    for prefix, block in structure.named_modules():
        if not isinstance(block, InvertedResidual):
            continue
        out = x
        if block.expand:
            out = twin.relu6(twin.conv_bn(out, f"{prefix}.conv1", f"{prefix}.bn1", 1), f"{prefix}.relu1")
        out = twin.conv_bn(out, f"{prefix}.conv2", f"{prefix}.bn2", block.conv2.stride[0], depthwise=True)
        out = twin.conv_bn(twin.relu6(out, f"{prefix}.relu2"), f"{prefix}.conv3", f"{prefix}.bn3", 1)
        x = twin.layers.Add(name=f"{prefix}.add")([out, x]) if block.use_residual else out
    return twin.relu6(twin.conv_bn(x, "conv2", "bn2", 1), "relu2")


# Each architecture's twin from the normalized input to the last feature map (pooling and fc are shared).
_FEATURES = {"resnet18": _resnet18_features, "mobilenet_v2": _mobilenet_v2_features}


def build_twin(checkpoint: Checkpoint, batch: int | None = None) -> Any:
    """A keras.Model taking float32 NHWC pixels in [0, 1] and returning logits, weights set.

    `batch=None` leaves the batch dimension dynamic; an int fixes it (some deployers want
    static shapes). Raises KeyError if the state dict lacks a layer the spec implies, ValueError
    for an architecture with no twin; the callers turn both into a CheckpointError.
    """
    tf = import_tensorflow()
    keras = tf.keras
    spec: ModelSpec = checkpoint.spec
    if spec.arch not in _FEATURES:
        raise ValueError(f"no Keras twin of architecture {spec.arch!r} (twins exist for {', '.join(_FEATURES)})")
    state = {k: v.detach().float().cpu().numpy() for k, v in checkpoint.state_dict.items()}
    twin = _TwinLayers(keras, state)
    layers = keras.layers

    channels, height, width = spec.input_shape
    inputs = keras.Input(shape=(height, width, channels), batch_size=batch, name="pixels", dtype="float32")
    # Normalize as x * scale + shift: the same per-channel affine torch runs, in front of
    # the first convolution, so the file still takes [0, 1] pixels (and int8 input maps 1:1
    # onto 8-bit pixels).
    scale = state["normalize.scale"].reshape(-1).astype(np.float32)
    shift = state["normalize.shift"].reshape(-1).astype(np.float32)
    x = layers.Rescaling(scale=scale, offset=shift, name="normalize")(inputs)
    x = _FEATURES[spec.arch](twin, x, spec)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    fc = layers.Dense(spec.num_classes, name="fc")
    logits = fc(x)
    fc.set_weights([state["fc.weight"].T.copy(), state["fc.bias"]])
    return keras.Model(inputs, logits, name=f"edgekit_{spec.arch}")


def build_twin_from_file(source: Any, batch: int | None, precision: str = "fp32") -> tuple[Checkpoint, Any]:
    """The Keras twin of an edgekit checkpoint (or of an int8 artifact, for int8), from its path or
    the SourceFile an export has read: the common start of the TFLite and SavedModel exporters. A
    malformed state dict is a CheckpointError."""
    from ..errors import CheckpointError
    from .source import as_source

    source = as_source(source)
    checkpoint = source.checkpoint(precision)
    try:
        return checkpoint, build_twin(checkpoint, batch=batch)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {source.path} does not fit its recorded {checkpoint.spec.arch} shape "
                              f"({exc})",
                              "re-create it with edgekit train/prune/quantize") from exc


def concrete_function(model: Any) -> Any:
    """The model as a traced tf.function with its weights frozen into constants: the converter's input.

    Frozen on purpose: from an unfrozen function TensorFlow 2.21's converter keeps the weights as
    resource variables (VAR_HANDLE ops) that nothing initializes, and the file outputs NaN
    (measured). Freezing also skips the temporary SavedModel (and its stdout print) that
    `from_keras_model` goes through. convert_variables_to_constants_v2 is the function TFLite's
    own converter uses for this; it has no public alias.
    """
    tf = import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    signature = tf.TensorSpec(model.inputs[0].shape, tf.float32, name="pixels")
    traced = tf.function(lambda pixels: model(pixels, training=False)).get_concrete_function(signature)
    return convert_variables_to_constants_v2(traced)


def nchw_to_nhwc(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(batch, dtype=np.float32).transpose(0, 2, 3, 1))


def runner_input(batch: np.ndarray, file_nhwc_shape: Any) -> np.ndarray:
    """A runner's NCHW float batch as the NHWC one its file takes, checked against the file's own
    input shape (height, width, channels), so no image size is assumed here."""
    batch = np.asarray(batch, dtype=np.float32)
    height, width, channels = (int(d) for d in list(file_nhwc_shape)[1:])
    if batch.ndim != 4 or batch.shape[1:] != (channels, height, width):
        raise ConfigError(f"runner input has shape {batch.shape}, expected [N, {channels}, {height}, {width}]",
                          "pass float32 NCHW pixels in [0, 1]")
    return nchw_to_nhwc(batch)
