"""Quantized engines and their qconfigs: which int8 kernels a model is built and run for.

A leaf beside qmodel.py (the int8 model and its file), which builds on it.

The engine (`backend`) decides the qconfig, the fusions and the kernels, from torch's own
definitions for it (`get_default_qconfig(engine)`, `get_default_qat_qconfig(engine)`, the
engine's BackendConfig fusion patterns); edgekit only swaps the activation observer for its
calibration method, keeping the engine's dtype and range. x86/fbgemm (the default): 7-bit
activations (reduce_range, 0..127: without VNNI, fbgemm's u8*s8 pair sums can saturate int16;
with it the int8 model is correct on any x86 CPU), per-channel symmetric int8 weights.
qnnpack (the ARM engine of PyTorch Mobile): full 8-bit activations (0..255, no reduce_range),
per-tensor symmetric int8 weights, as torch's qnnpack qconfig has them. (Per-channel weights
do run under qnnpack in eager mode on torch 2.13, checked here, but torch's qnnpack qconfig is
per-tensor and edgekit follows it.) `--weights per-channel|per-tensor` overrides the engine's
choice of weight scheme (torch's own weight observers for each), to compare the two; the recipe
records it (`weights`) and loading replays it.

An int8 file is only right under the engine it was made for: conv weights are prepacked for
the engine current at load time, and elementwise ops (add_relu, quantize) dispatch on the
engine current at run time. A qnnpack file loaded under x86 changed the top class of 3 of 32
random inputs here (fbgemm's kernels assume 7-bit activations). So the recipe records the engine,
`load_quantized` selects it, and runners run under it (`quantized_engine`).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import nn

from .config import QuantBackend, WeightScheme
from .errors import UnsupportedError


def _aoq():
    import torch.ao.quantization as aoq

    return aoq


# The CPUs each engine's int8 kernels are written for. qnnpack also runs on x86 (SSE2 kernels),
# which is how its accuracy and parity are measured here; its latency there says nothing about ARM.
ENGINE_CPU = {QuantBackend.x86: "x86", QuantBackend.fbgemm: "x86", QuantBackend.qnnpack: "ARM"}
# The conv+BN(+ReLU) patterns fusion_groups makes: every engine must fuse them itself.
FUSED_PATTERNS = ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d))


def engine_of(backend: str | QuantBackend) -> QuantBackend:
    """The engine named `backend`, refused (one line, with the fix) if edgekit or this torch lacks it."""
    name = backend.value if isinstance(backend, QuantBackend) else str(backend)
    choices = [b.value for b in QuantBackend]
    if name not in choices:
        raise UnsupportedError(f"unknown quantized engine '{name}'", f"pass --backend with one of {', '.join(choices)}")
    if name not in torch.backends.quantized.supported_engines:
        raise UnsupportedError(f"quantized engine '{name}' is not available in this torch build "
                               f"(it has {', '.join(torch.backends.quantized.supported_engines)})",
                               "pass --backend with one of those, or install a torch build with it")
    return QuantBackend(name)


def set_backend(backend: str | QuantBackend) -> None:
    torch.backends.quantized.engine = engine_of(backend).value


@contextlib.contextmanager
def quantized_engine(backend: str | QuantBackend | None):
    """Run the body under `backend` (None: leave the engine as it is), then restore the previous one."""
    previous = torch.backends.quantized.engine
    if backend is None or previous == (backend.value if isinstance(backend, QuantBackend) else backend):
        yield  # the common case in a timed loop: nothing to switch
        return
    set_backend(backend)
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def artifact_engine(recipe: dict[str, Any]) -> QuantBackend:
    """The engine an int8 artifact was made for (files from before the recipe named it: x86)."""
    return engine_of(recipe.get("backend", QuantBackend.x86.value))


def host_cpu() -> str:
    """This machine's CPU family as ENGINE_CPU names them ("x86", "ARM"), or what platform says."""
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine.startswith(("arm", "aarch64")):
        return "ARM"
    return machine or "unknown"


def engine_latency_note(backend: str | QuantBackend) -> str | None:
    """A label for latency measured with an engine whose kernels are written for other CPUs, else None."""
    engine = engine_of(backend)
    host, target = host_cpu(), ENGINE_CPU[engine]
    if host == target:
        return None
    return (f"{host} via {engine.value}: not representative of {target} (latency only: {engine.value}'s {host} "
            f"kernels ran here, not its {target} ones)")


def _instance(factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's reduce_range deprecation notice, about its own defaults
        return factory()


def _backend_config(backend: str):
    import torch.ao.quantization.backend_config.utils  # noqa: F401  (the getters below need it imported first)
    from torch.ao.quantization import backend_config

    getters = {QuantBackend.qnnpack: backend_config.get_qnnpack_backend_config,
               QuantBackend.fbgemm: backend_config.get_fbgemm_backend_config}
    if engine_of(backend) in getters:
        return getters[engine_of(backend)]()
    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config

    return get_x86_backend_config()


def engine_fusers(backend: str) -> dict[tuple, Any]:
    """The engine's own fuser for each pattern edgekit fuses, from its BackendConfig; refused if it lacks one."""
    found = {}
    for config in _backend_config(backend).configs:
        if config.fuser_method is not None and config.pattern in FUSED_PATTERNS:
            found[config.pattern] = config.fuser_method
    missing = [" + ".join(t.__name__ for t in p) for p in FUSED_PATTERNS if p not in found]
    if missing:
        raise UnsupportedError(f"quantized engine '{backend}' does not fuse {', '.join(missing)}",
                               f"pass --backend with one of {', '.join(b.value for b in QuantBackend)}")
    return {pattern: found[pattern] for pattern in FUSED_PATTERNS}


def activation_range(backend: str) -> dict[str, Any]:
    """dtype, qscheme, quant_min/max and reduce_range of the engine's own activation observer."""
    observer = _instance(_aoq().get_default_qconfig(engine_of(backend).value).activation)
    return {"dtype": observer.dtype, "qscheme": observer.qscheme, "quant_min": int(observer.quant_min),
            "quant_max": int(observer.quant_max), "reduce_range": bool(observer.reduce_range)}


def describe_engine(backend: str, per_channel: bool | None = None) -> dict[str, Any]:
    """What the manifest records about the engine: its ranges, weight scheme (per_channel: see
    weight_observer) and fusions, as plain data."""
    engine = engine_of(backend)
    act = activation_range(engine.value)
    weight = _instance(weight_observer(engine.value, per_channel))
    per_channel = weight.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
    bits = (act["quant_max"] - act["quant_min"] + 1).bit_length() - 1
    return {"engine": engine.value, "kernels_for": ENGINE_CPU[engine],
            "qconfig": f"torch.ao.quantization.get_default_qconfig('{engine.value}') / "
                       f"get_default_qat_qconfig('{engine.value}'); activation observer per calibration method",
            "activation": {"dtype": str(act["dtype"]).replace("torch.", ""),
                           "qscheme": str(act["qscheme"]).replace("torch.", ""), "quant_min": act["quant_min"],
                           "quant_max": act["quant_max"], "reduce_range": act["reduce_range"], "bits": bits},
            "weight": {"dtype": str(weight.dtype).replace("torch.", ""),
                       "qscheme": str(weight.qscheme).replace("torch.", ""), "per_channel": per_channel,
                       "quant_min": int(weight.quant_min), "quant_max": int(weight.quant_max)},
            "fusions": [" + ".join(t.__name__ for t in p) for p in engine_fusers(engine.value)]
                       + ["residual add + ReLU (FloatFunctional.add_relu)"]}


def activation_observer_args(backend: str) -> dict[str, Any]:
    """The engine's activation dtype, scheme and range as observer arguments. The range is given as
    quant_min/quant_max (x86: 0..127) rather than as reduce_range, which torch deprecates and warns
    about at every observer it builds; the two give the same range and the same scales."""
    act = activation_range(backend)
    return {"dtype": act["dtype"], "qscheme": act["qscheme"], "quant_min": act["quant_min"],
            "quant_max": act["quant_max"]}


def minmax_activation_observer(backend: str = QuantBackend.x86.value):
    return _aoq().MinMaxObserver.with_args(**activation_observer_args(backend))


def per_channel_weights(backend: str, scheme: str | WeightScheme | None = None) -> bool:
    """Whether int8 weights get one scale per output channel: `scheme` says (WeightScheme; None or
    "engine": the engine's own qconfig decides, per-channel for x86/fbgemm, per-tensor for qnnpack)."""
    scheme = WeightScheme(getattr(scheme, "value", scheme) or WeightScheme.engine.value)
    if scheme is WeightScheme.engine:
        weight = _instance(_aoq().get_default_qconfig(engine_of(backend).value).weight)
        return weight.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
    return scheme is WeightScheme.per_channel


def artifact_per_channel(recipe: dict[str, Any]) -> bool:
    """Whether an int8 artifact's weights are per channel (files from before the recipe said: the engine's choice)."""
    return per_channel_weights(artifact_engine(recipe).value, recipe.get("weights"))


def weight_observer(backend: str = QuantBackend.x86.value, per_channel: bool | None = None):
    """Symmetric int8 weights, per channel or per tensor (None: the engine's own choice, see per_channel_weights);
    torch's own observer for each, as its qconfigs use them."""
    aoq = _aoq()
    if per_channel is None:
        return aoq.get_default_qconfig(engine_of(backend).value).weight
    return aoq.default_per_channel_weight_observer if per_channel else aoq.default_weight_observer


def static_qconfig(activation=None, backend: str = QuantBackend.x86.value, per_channel: bool | None = None):
    """int8 weights (per_channel: see weight_observer); the engine's quint8 activations observed by `activation`
    (default min/max)."""
    return _aoq().QConfig(activation=activation or minmax_activation_observer(backend),
                          weight=weight_observer(backend, per_channel))


def qat_qconfig(backend: str = QuantBackend.x86.value, per_channel: bool | None = None):
    """Non-fused FakeQuantize (exports to ONNX QDQ) with the ranges of torch's QAT qconfig for the engine;
    weights per channel or per tensor (None: the engine's choice)."""
    aoq = _aoq()
    torch_qat = aoq.get_default_qat_qconfig(engine_of(backend).value)
    act = _instance(torch_qat.activation)
    act_fq = aoq.FakeQuantize.with_args(observer=aoq.MovingAverageMinMaxObserver, quant_min=int(act.quant_min),
                                        quant_max=int(act.quant_max), dtype=act.dtype, qscheme=act.qscheme,
                                        reduce_range=False)
    weight = _instance(torch_qat.weight if per_channel is None else weight_observer(backend, per_channel))
    per_channel = weight.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
    observer = aoq.MovingAveragePerChannelMinMaxObserver if per_channel else aoq.MovingAverageMinMaxObserver
    weight_fq = aoq.FakeQuantize.with_args(observer=observer, quant_min=int(weight.quant_min),
                                           quant_max=int(weight.quant_max), dtype=weight.dtype,
                                           qscheme=weight.qscheme)
    return aoq.QConfig(activation=act_fq, weight=weight_fq)
