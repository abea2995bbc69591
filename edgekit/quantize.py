"""int8 quantization: dynamic, static PTQ (calibrated), QAT; per-layer sensitivity.

API choice, and why (torch 2.13/2.14):
- Eager mode `torch.ao.quantization` (QuantStub/DeQuantStub, fuse_modules, prepare/convert,
  x86 backend). It is deprecated in favour of PT2E but still works in 2.13/2.14, and on this
  model it is the path that works end to end: torchao's PT2E `X86InductorQuantizer` QAT failed
  on ResNet18 here ("Input partition has more than one output node"), and PT2E lives in
  torchao, a separate install. The model was written for eager mode (residual Add as a module,
  fuse_model), so the swap to a quantizable add is one module per block. The deprecation is a
  known dead-end: when eager mode is removed, the replacement is torchao PT2E
  (prepare_pt2e/convert_pt2e with X86InductorQuantizer) once its QAT handles ResNet18.
- QAT uses *non-fused* `FakeQuantize` modules (weights qint8 -128..127 per-channel symmetric,
  activations quint8), not the default fused `fused_moving_avg_obs_fake_quant`: the legacy
  ONNX exporter writes the non-fused ones as QuantizeLinear/DequantizeLinear pairs that match
  torch's fake-quant output; the fused op and the dynamo exporter did not export.
- For ONNX, BN is folded into the convs before the QDQ export (eval-mode fusion), so ONNX
  Runtime can fuse DQ->Conv->Q into QLinearConv (a QDQ graph with Conv and BN apart ran 5x
  slower than ORT's own quantize_static here).
- Activations use reduce_range (7-bit) like torch's x86 default: without VNNI, fbgemm's u8*s8
  pair sums can saturate int16; with it the int8 model is correct on any x86 CPU.

Activation calibration methods (weights are always per-channel symmetric int8, min/max):
minmax (observed range), percentile (clip at the p-th percentile), entropy (the clipping
range minimizing KL divergence between the float histogram and its quantized version, as in
TensorRT), mse (the clipping range minimizing the histogram's quantization error). `auto`
tries all four and keeps the best on the validation split.

Saving without pickle: a converted model's state dict is tensors (qint8/quint8 quantized
tensors, scales, zero points, packed Linear params) that load with weights_only=True. The file
stores it with the ModelSpec and a description of the quantization recipe (mode, backend,
float-kept layers); loading replays fuse/prepare/convert on a fresh model and loads the state.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import Manifest, atomic_torch_save, parent_ref, to_plain, write_manifest
from .calibrate import CalibrationSet, load_calibration
from .config import CalibMethod, DataConfig, QuantizeConfig, QuantMode, Schedule, TrainConfig
from .data import DataSplits, load_data_for_checkpoint
from .errors import CheckpointError, ConfigError, UnsupportedError
from .model import BasicBlock, Checkpoint, ModelSpec, ResNet18, build_model, count_macs, load_checkpoint
from .prune import accuracy, measure_latency
from .report import Reporter, quiet

QUANTIZED_FORMAT = "edgekit-quantized/1"
METHODS = (CalibMethod.minmax, CalibMethod.percentile, CalibMethod.entropy, CalibMethod.mse)

warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao.quantization")


def _aoq():
    import torch.ao.quantization as aoq

    return aoq


# ---- a quantizable ResNet18 -------------------------------------------------------------------


class QuantAddReLU(nn.Module):
    """The residual add + ReLU as one FloatFunctional op (quantized: one fused add_relu kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.op = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.op.add_relu(a, b)


class Island(nn.Module):
    """Run `inner` in the other precision: dequant -> float layer -> quant, or quant -> int8 -> dequant."""

    def __init__(self, inner: nn.Module, float_inside: bool) -> None:
        super().__init__()
        aoq = _aoq()
        self.enter = aoq.DeQuantStub() if float_inside else aoq.QuantStub()
        self.inner = inner
        self.exit = aoq.QuantStub() if float_inside else aoq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exit(self.inner(self.enter(x)))


class QuantResNet(nn.Module):
    """ResNet18 with quant/dequant stubs: normalize in float, everything after it int8."""

    def __init__(self, model: ResNet18) -> None:
        super().__init__()
        aoq = _aoq()
        self.spec = model.spec
        self.quant = aoq.QuantStub()
        self.model = model
        self.dequant = aoq.DeQuantStub()
        for block in model.modules():
            if isinstance(block, BasicBlock):
                block.add = QuantAddReLU()
                block.relu2 = nn.Identity()
        # Normalize stays float (it is x*scale+shift on the float input); the stub quantizes after it.
        self.normalize = model.normalize
        model.normalize = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(self.normalize(x))))


def fusion_groups(model: ResNet18) -> list[tuple[nn.Module, list[list[str]]]]:
    """The same conv+BN(+ReLU) groups as ResNet18.fuse_model, for eval (PTQ) and train (QAT) fusion."""
    groups: list[tuple[nn.Module, list[list[str]]]] = [(model, [["conv1", "bn1", "relu"]])]
    for module in model.modules():
        if isinstance(module, BasicBlock):
            groups.append((module, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]]))
            if module.downsample is not None:
                groups.append((module.downsample, [["0", "1"]]))
    return groups


def quantizable(model: ResNet18, qat: bool = False) -> QuantResNet:
    """Wrap + fuse a float ResNet18 (copied) for eager-mode quantization."""
    aoq = _aoq()
    model = copy.deepcopy(model)
    wrapped = QuantResNet(model)
    if qat:
        wrapped.train()
        for parent, groups in fusion_groups(model):
            aoq.fuse_modules_qat(parent, groups, inplace=True)
    else:
        wrapped.eval()
        for parent, groups in fusion_groups(model):
            aoq.fuse_modules(parent, groups, inplace=True)
    return wrapped


def layer_names(wrapped: QuantResNet) -> list[str]:
    """The quantizable compute layers (fused convs and the classifier), by module path."""
    from torch.ao.nn.intrinsic import _FusedModule

    names = []
    for name, module in wrapped.model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, _FusedModule)) and not _inside_fused(name, wrapped.model):
            names.append(name)
    return names


def _inside_fused(name: str, root: nn.Module) -> bool:
    from torch.ao.nn.intrinsic import _FusedModule

    parts = name.split(".")
    for cut in range(1, len(parts)):
        if isinstance(root.get_submodule(".".join(parts[:cut])), _FusedModule):
            return True
    return False


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


# ---- observers: range search on a histogram ---------------------------------------------------


class RangeSearchObserver(torch.ao.quantization.HistogramObserver):
    """HistogramObserver whose clipping range comes from `method`: percentile, entropy (KL) or mse."""

    def __init__(self, method: str = "mse", percentile: float = 99.99, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.method = method
        self.percentile = percentile

    @torch.jit.ignore
    def calculate_qparams(self):  # type: ignore[override]
        if self.histogram.sum() == 0 or not torch.isfinite(self.min_val) or self.min_val == self.max_val:
            return super().calculate_qparams()
        lo, hi = self.search_range()
        return self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))

    def search_range(self) -> tuple[float, float]:
        hist = self.histogram.double().numpy()
        lo_v, hi_v = float(self.min_val), float(self.max_val)
        edges = np.linspace(lo_v, hi_v, len(hist) + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        if self.method == "percentile":
            cdf = np.cumsum(hist) / hist.sum()
            p = self.percentile / 100.0
            hi = float(edges[min(len(hist), np.searchsorted(cdf, p) + 1)])
            lo = lo_v if lo_v >= 0 else float(edges[np.searchsorted(cdf, 1 - p)])
            return min(lo, 0.0), max(hi, 1e-8)
        levels = int(self.quant_max - self.quant_min + 1)
        best, best_t = math.inf, 1.0
        for t in np.linspace(0.05, 1.0, 96):
            lo, hi = min(lo_v * t, 0.0), max(hi_v * t, 1e-8)
            err = self._kl(hist, edges, lo, hi, levels) if self.method == "entropy" else \
                self._mse(hist, centers, lo, hi, levels)
            if err < best:
                best, best_t = err, t
        return min(lo_v * best_t, 0.0), max(hi_v * best_t, 1e-8)

    @staticmethod
    def _mse(hist, centers, lo, hi, levels) -> float:
        scale = (hi - lo) / (levels - 1)
        zero = round(-lo / scale)
        q = np.clip(np.round(centers / scale) + zero, 0, levels - 1)
        return float(np.sum(hist * (centers - (q - zero) * scale) ** 2))

    @staticmethod
    def _kl(hist, edges, lo, hi, levels) -> float:
        a = max(0, int(np.searchsorted(edges, lo, side="right")) - 1)
        b = min(len(hist), int(np.searchsorted(edges, hi, side="left")))
        # Fewer bins than levels would quantize losslessly in this model and hide the clipping cost.
        if b - a < levels:
            return math.inf
        inside = hist[a:b]
        p = inside.copy()
        p[0] += hist[:a].sum()  # clipped mass lands on the edges, as the quantizer puts it there
        p[-1] += hist[b:].sum()
        # q: the in-range histogram alone, spread over `levels` buckets, as TensorRT's entropy
        # calibration does; p carries the clipped mass, so KL(p || q) charges for clipping.
        chunks = np.array_split(np.arange(len(p)), levels)
        q = np.zeros_like(p)
        for chunk in chunks:
            mass, nonzero = inside[chunk].sum(), (inside[chunk] > 0)
            if nonzero.any():
                q[chunk[nonzero]] = mass / nonzero.sum()
        p, q = p / p.sum(), q / max(q.sum(), 1e-12)
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def activation_observer(method: CalibMethod, config: QuantizeConfig):
    aoq = _aoq()
    common = dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=True)
    if method is CalibMethod.minmax:
        return aoq.MinMaxObserver.with_args(**common)
    return RangeSearchObserver.with_args(method=method.value, percentile=config.percentile, **common)


def weight_observer():
    aoq = _aoq()
    return aoq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  quant_min=-128, quant_max=127)


def static_qconfig(method: CalibMethod, config: QuantizeConfig):
    return _aoq().QConfig(activation=activation_observer(method, config), weight=weight_observer())


def qat_qconfig():
    """Non-fused FakeQuantize (exports to ONNX QDQ); same ranges as the static qconfig."""
    aoq = _aoq()
    act = aoq.FakeQuantize.with_args(observer=aoq.MovingAverageMinMaxObserver, quant_min=0, quant_max=127,
                                     dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
    weight = aoq.FakeQuantize.with_args(observer=aoq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                        quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return aoq.QConfig(activation=act, weight=weight)


# ---- building int8 models ---------------------------------------------------------------------


def _set_backend(backend: str) -> None:
    if backend not in torch.backends.quantized.supported_engines:
        raise UnsupportedError(f"quantized backend '{backend}' is not available in this torch build",
                               f"use one of {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend


def _mark_islands(wrapped: QuantResNet, keep_float: list[str], only_int8: list[str] | None) -> None:
    """keep_float: these layers run float inside an int8 model; only_int8: only these run int8."""
    if only_int8 is not None:
        wrapped.qconfig = None
        wrapped.quant = nn.Identity()
        wrapped.dequant = nn.Identity()
        for name in only_int8:
            _replace(wrapped.model, name, Island(wrapped.model.get_submodule(name), float_inside=False))
        for block in wrapped.model.modules():
            if isinstance(block, BasicBlock):
                block.add = _FloatAddReLU()
        return
    for name in keep_float:
        inner = wrapped.model.get_submodule(name)
        inner.qconfig = None
        _replace(wrapped.model, name, Island(inner, float_inside=True))


class _FloatAddReLU(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.relu(a + b)


def prepare_static(model: ResNet18, qconfig, keep_float: list[str] = (), only_int8: list[str] | None = None
                   ) -> QuantResNet:
    aoq = _aoq()
    wrapped = quantizable(model)
    wrapped.qconfig = qconfig
    _mark_islands(wrapped, list(keep_float), only_int8)
    if only_int8 is not None:
        for name in only_int8:
            wrapped.model.get_submodule(name).qconfig = qconfig
    aoq.prepare(wrapped, inplace=True)
    return wrapped


@torch.no_grad()
def calibrate(prepared: nn.Module, cal: CalibrationSet, batch_size: int = 128) -> None:
    prepared.eval()
    for x in cal.batches(batch_size):
        prepared(x)


def convert(prepared: nn.Module) -> nn.Module:
    return _aoq().convert(prepared.eval(), inplace=False)


def static_quantize(model: ResNet18, cal: CalibrationSet, method: CalibMethod, config: QuantizeConfig,
                    keep_float: list[str] = (), only_int8: list[str] | None = None) -> nn.Module:
    _set_backend(config.backend)
    prepared = prepare_static(model, static_qconfig(method, config), keep_float, only_int8)
    calibrate(prepared, cal)
    return convert(prepared)


def dynamic_quantize(model: ResNet18) -> nn.Module:
    """torch dynamic int8: only nn.Linear (and RNNs) have dynamic kernels; in ResNet18 that is `fc`."""
    return _aoq().quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def int8_census(model: nn.Module) -> dict[str, Any]:
    """Weights counted by dtype from the module's state dict (packed Linear params unpacked)."""
    counts: dict[str, int] = {}
    tensors: dict[str, int] = {}

    def add(t: torch.Tensor) -> None:
        key = str(t.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + t.numel()
        tensors[key] = tensors.get(key, 0) + 1

    for value in model.state_dict().values():
        if isinstance(value, torch.Tensor):
            add(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    add(item)
    weights_int8 = counts.get("qint8", 0)
    total = sum(counts.values())
    return {"elements_by_dtype": counts, "tensors_by_dtype": tensors, "qint8_tensors": tensors.get("qint8", 0),
            "int8_weight_fraction": weights_int8 / max(1, total)}


# ---- QAT --------------------------------------------------------------------------------------


def prepare_qat_from_ptq(model: ResNet18, ptq_prepared: QuantResNet | None, keep_float: list[str] = ()
                         ) -> QuantResNet:
    """Fake-quant model for QAT whose activation ranges start at the calibrated PTQ ranges."""
    aoq = _aoq()
    wrapped = quantizable(model, qat=True)
    wrapped.qconfig = qat_qconfig()
    _mark_islands(wrapped, list(keep_float), None)
    aoq.prepare_qat(wrapped, inplace=True)
    if ptq_prepared is not None:
        observers = {name: m for name, m in ptq_prepared.named_modules() if isinstance(m, aoq.ObserverBase)}
        for name, fq in wrapped.named_modules():
            if isinstance(fq, aoq.FakeQuantize) and name in observers and not name.endswith("weight_fake_quant"):
                source = observers[name]
                scale, zero = source.calculate_qparams()
                fq.scale.resize_(scale.shape).copy_(scale)
                fq.zero_point.resize_(zero.shape).copy_(zero)
                lo = (fq.quant_min - zero.float()) * scale
                hi = (fq.quant_max - zero.float()) * scale
                fq.activation_post_process.min_val.resize_(lo.shape).copy_(lo)
                fq.activation_post_process.max_val.resize_(hi.shape).copy_(hi)
    return wrapped


def fold_float_islands(model: nn.Module) -> None:
    """QAT-fused conv+BN layers kept float still hold a separate BN; fold it as eval fusion would."""
    import torch.ao.nn.intrinsic as nni
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for island in [m for m in model.modules() if isinstance(m, Island)]:
        inner = island.inner.eval()
        if isinstance(inner, nni.ConvBnReLU2d):
            island.inner = nni.ConvReLU2d(fuse_conv_bn_eval(inner[0], inner[1]), inner[2])
        elif isinstance(inner, nni.ConvBn2d):
            island.inner = fuse_conv_bn_eval(inner[0], inner[1])


def freeze_qat(model: nn.Module) -> None:
    aoq = _aoq()
    model.apply(aoq.disable_observer)
    model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)


# ---- save / load ------------------------------------------------------------------------------


@dataclass
class QuantizeResult:
    artifact: Path
    model: nn.Module
    metrics: dict[str, Any]
    onnx: Path | None = None
    sensitivity: list[dict[str, Any]] = field(default_factory=list)


def save_quantized(path: Path, model: nn.Module, spec: ModelSpec, classes: list[str], recipe: dict[str, Any],
                   extra: dict[str, Any]) -> Path:
    state = model.state_dict()
    # Module versions decide how quantized modules parse their state (e.g. packed Linear params);
    # stored as plain data beside the tensors rather than as an attribute of a pickled dict.
    versions = {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}
    atomic_torch_save({"format": QUANTIZED_FORMAT, "spec": spec.to_dict(), "classes": list(classes),
                       "recipe": to_plain(recipe), "state_dict": dict(state), "state_metadata": versions,
                       "extra": to_plain(extra)}, path)
    return Path(path)


def is_quantized_artifact(path: str | Path) -> bool:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == QUANTIZED_FORMAT


def load_quantized(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an int8 model by replaying its recipe on a fresh model, then loading its tensors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"quantized model not found: {path}", "make one with `edgekit quantize`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: corrupt or not an edgekit file", "re-create it") from exc
    if not isinstance(payload, dict) or payload.get("format") != QUANTIZED_FORMAT:
        raise CheckpointError(f"{path} is not an edgekit quantized model", "pass a file written by `edgekit quantize`")
    recipe = payload["recipe"]
    spec = ModelSpec.from_dict(payload["spec"])
    _set_backend(recipe.get("backend", "x86"))
    float_model = build_model(spec).eval()
    if recipe["mode"] == QuantMode.dynamic.value:
        model = dynamic_quantize(float_model)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncalibrated observers warn; their values are overwritten below
            prepared = prepare_static(float_model, static_qconfig(CalibMethod.minmax, QuantizeConfig()),
                                      recipe.get("keep_float", []))
            model = convert(prepared)
    from collections import OrderedDict

    state = OrderedDict(payload["state_dict"])
    state._metadata = OrderedDict(payload.get("state_metadata", {}))  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: int8 tensors do not fit the recorded model", "re-create the file") from exc
    return model.eval(), payload


def load_runner(path: Path, threads: int | None = None):
    from .formats.torch import TorchRunner

    return TorchRunner(load_quantized(path)[0], threads, name="torch-int8")


# ---- the stage --------------------------------------------------------------------------------


def _accuracies(model: nn.Module, data: DataSplits) -> dict[str, float]:
    return {"val_accuracy": accuracy(model, data), "test_accuracy": accuracy(model, data, "test")}


def sensitivity_analysis(model: ResNet18, cal: CalibrationSet, data: DataSplits, method: CalibMethod,
                         config: QuantizeConfig, reporter: Reporter = quiet) -> list[dict[str, Any]]:
    """Validation accuracy with only one layer int8 (the rest float), per layer, most sensitive first."""
    base = accuracy(model, data)
    rows = []
    names = layer_names(quantizable(model))
    with reporter.progress("sensitivity", total=len(names)) as bar:
        for name in names:
            q = static_quantize(model, cal, method, config, only_int8=[name])
            acc = accuracy(q, data)
            rows.append({"layer": name, "val_accuracy": acc, "drop": base - acc})
            bar.advance(1)
    rows.sort(key=lambda r: r["drop"], reverse=True)
    return rows


def int8_as_fake_quant(qmodel: nn.Module, spec: ModelSpec, recipe: dict[str, Any]) -> QuantResNet:
    """A float fake-quant twin of a converted int8 model: its int8 weights and scales, nothing re-measured.

    Built from the converted model alone (so from any int8 artifact on disk, PTQ or QAT): the
    same fused graph is prepared with non-fused FakeQuantize modules, then every weight fake-quant
    takes the module's int8 weight (dequantized: exactly on the int8 grid) with its per-channel
    scales, and every activation fake-quant takes the module's output scale and zero point.
    Exported through the TorchScript ONNX exporter, that is a QDQ graph of the very numbers the
    torch int8 model computes with.
    """
    aoq = _aoq()
    wrapped = quantizable(build_model(spec).eval())
    wrapped.qconfig = qat_qconfig()
    _mark_islands(wrapped, list(recipe.get("keep_float", [])), None)
    wrapped.train()
    aoq.prepare_qat(wrapped, inplace=True)
    converted = dict(qmodel.named_modules())
    with torch.no_grad():
        for name, fake in wrapped.named_modules():
            if not isinstance(fake, aoq.FakeQuantize):
                continue
            owner_name, _, role = name.rpartition(".")
            owner = converted.get(owner_name)
            if owner is None:
                raise CheckpointError(f"int8 model has no module '{owner_name}' for its fake-quant twin",
                                      "re-create the int8 artifact with this edgekit version")
            if role == "weight_fake_quant":
                weight = owner.weight()
                float_owner = wrapped.get_submodule(owner_name)
                float_owner.weight.copy_(weight.dequantize())
                if owner.bias() is not None:
                    float_owner.bias = nn.Parameter(owner.bias().detach().clone())
                scale, zero = weight.q_per_channel_scales().float(), weight.q_per_channel_zero_points()
                fake.ch_axis = int(weight.q_per_channel_axis())
            else:
                scale = torch.tensor([float(owner.scale)])
                zero = torch.tensor([int(owner.zero_point)], dtype=torch.int32)
            fake.scale.resize_(scale.shape).copy_(scale)
            fake.zero_point.resize_(zero.shape).copy_(zero.to(fake.zero_point.dtype))
            fake.disable_observer()
        for island_name, island in wrapped.named_modules():
            if isinstance(island, Island) and isinstance(island.enter, aoq.DeQuantStub):
                # a float-kept layer: its float weights (BN folded, as in the int8 file) as they are
                island.inner.load_state_dict(converted[island_name + ".inner"].state_dict())
    return wrapped.eval()


def dequantized_checkpoint(path: Path) -> Checkpoint:
    """An int8 artifact as a float checkpoint: its int8 weights dequantized, BN already folded into them.

    For exporters that quantize with their own tools (TFLite's converter, TensorRT's QDQ), so
    their int8 files start from the very weights of the int8 model; their activation ranges come
    from the shared calibration set again. Each BatchNorm becomes an identity that carries the
    folded bias (weight 1, mean 0, variance 1 - eps).
    """
    qmodel, payload = load_quantized(path)
    recipe = payload["recipe"]
    if recipe["mode"] == QuantMode.dynamic.value:
        raise UnsupportedError(f"{Path(path).name} is a dynamic-int8 model (only fc is int8)",
                               "export its fp32 parent, or quantize with --mode static or qat")
    spec = ModelSpec.from_dict(payload["spec"])
    twin = int8_as_fake_quant(qmodel, spec, recipe)
    model = build_model(spec).eval()

    def float_conv(name: str) -> nn.Module:
        module = twin.model.get_submodule(name)
        module = module.inner if isinstance(module, Island) else module
        # a float fused ConvReLU2d is a Sequential(conv, relu); a QAT one is itself the conv
        return module if isinstance(getattr(module, "weight", None), torch.Tensor) else module[0]

    with torch.no_grad():
        for parent, groups in fusion_groups(model):
            prefix = next(n for n, m in model.named_modules() if m is parent)
            for group in groups:
                conv_name, bn_name = (f"{prefix}.{g}" if prefix else g for g in group[:2])
                source = float_conv(conv_name)
                model.get_submodule(conv_name).weight.copy_(source.weight)
                bn = model.get_submodule(bn_name)
                bn.weight.fill_(1.0)
                bn.bias.copy_(source.bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
        fc = float_conv("fc")
        model.fc.weight.copy_(fc.weight)
        model.fc.bias.copy_(fc.bias)
    extra = dict(payload.get("extra", {}))
    return Checkpoint(spec=spec, state_dict=model.state_dict(), classes=list(payload.get("classes", [])), extra=extra)


def export_qdq_onnx(path: Path, out: Path, opset: int = 17, batch: int = 1, dynamic_batch: bool = False) -> Path:
    """QDQ ONNX of an int8 artifact (static PTQ or QAT) with int8 weight initializers."""
    from .formats.onnx import export_module

    qmodel, payload = load_quantized(path)
    if payload["recipe"]["mode"] == QuantMode.dynamic.value:
        raise UnsupportedError(f"{Path(path).name} is a dynamic-int8 model (only fc is int8); it has no QDQ graph",
                               "export its fp32 parent, or quantize with --mode static or qat")
    twin = int8_as_fake_quant(qmodel, ModelSpec.from_dict(payload["spec"]), payload["recipe"])
    return export_module(twin, out, opset=opset, dynamic_batch=dynamic_batch, batch=batch)


def quantize_checkpoint(source: Path, config: QuantizeConfig, out: Path, reporter: Reporter = quiet,
                        data_config: DataConfig | None = None, data: DataSplits | None = None) -> QuantizeResult:
    """Quantize an edgekit checkpoint (fp32 or pruned) to int8; write the artifact + manifest."""
    source, out = Path(source), Path(out)
    mode = QuantMode(config.mode)
    method = CalibMethod(config.method)
    if config.keep_float < 0:
        raise ConfigError(f"--keep-float must be >= 0, got {config.keep_float}", "e.g. --keep-float 2")
    if mode is not QuantMode.dynamic and not config.calibration:
        raise ConfigError(f"--mode {mode.value} needs a calibration set",
                          "pass --calibration calibration/<data>-512.json (make one with `edgekit calibrate`)")
    if mode is QuantMode.dynamic and (config.keep_float or config.sensitivity):
        raise ConfigError("--sensitivity/--keep-float apply to static and qat modes", "drop them or use --mode static")
    checkpoint = load_checkpoint(source)
    model = checkpoint.build()
    data = data if data is not None else load_data_for_checkpoint(checkpoint, data_config, reporter)
    _set_backend(config.backend)
    torch.manual_seed(config.seed)
    fp32 = _accuracies(model, data)
    fp32_latency = measure_latency(model, config.threads, config.latency_runs)
    metrics: dict[str, Any] = {"fp32_" + k: v for k, v in fp32.items()}
    metrics["fp32_latency_ms"] = fp32_latency["p50_ms"]
    recipe: dict[str, Any] = {"mode": mode.value, "backend": config.backend, "keep_float": []}
    extra: dict[str, Any] = {"parent": parent_ref(source), "data_config": checkpoint.extra.get("data_config"),
                             "data": data.describe()}
    cal = None
    sensitivity: list[dict[str, Any]] = []
    onnx_path = None
    note = ""

    if mode is QuantMode.dynamic:
        qmodel = dynamic_quantize(model)
        note = ("dynamic int8: torch has dynamic kernels only for Linear/RNN layers, so in ResNet18 only the final "
                "Linear (fc) is int8; all 20 convolutions stay fp32 (expect no speed-up and almost no size change)")
        recipe["quantized_layers"] = ["fc"]
        recipe["activation"] = "dynamic per-batch (fc input only)"
        recipe["weight"] = "qint8 per-tensor (fc)"
    else:
        cal = load_calibration(config.calibration, data, model.spec)
        extra["calibration"] = cal.manifest_ref()
        candidates = list(METHODS) if method is CalibMethod.auto else [method]
        if config.sensitivity or config.keep_float:
            sens_method = CalibMethod.minmax if method is CalibMethod.auto else method
            sensitivity = sensitivity_analysis(model, cal, data, sens_method, config, reporter)
            recipe["keep_float"] = [row["layer"] for row in sensitivity[: config.keep_float]]
            reporter.table("per-layer sensitivity (only this layer int8)", ["layer", "val accuracy", "drop (pt)"],
                           [[r["layer"], f"{r['val_accuracy']:.2%}", round(100 * r["drop"], 2)] for r in sensitivity])
        tried = []
        best = None
        for candidate in candidates:
            prepared = prepare_static(model, static_qconfig(candidate, config), recipe["keep_float"])
            calibrate(prepared, cal)
            qmodel_c = convert(prepared)
            val = accuracy(qmodel_c, data)
            tried.append({"method": candidate.value, "val_accuracy": val})
            reporter.info(f"quantize: static {candidate.value}: val {val:.2%}")
            if best is None or val > best[0]:
                best = (val, candidate, prepared, qmodel_c)
        _, chosen, ptq_prepared, qmodel = best
        recipe.update({"method": chosen.value, "methods_tried": tried,
                       "weight": "qint8 per-channel symmetric [-128, 127], min/max",
                       "activation": f"quint8 per-tensor affine, reduce_range (0..127), {chosen.value}",
                       "fused": "conv+BN+ReLU, residual add+ReLU (FloatFunctional.add_relu)",
                       "float_layers": ["normalize (x*scale+shift on the input)"] + recipe["keep_float"]})
        metrics["ptq_val_accuracy"], metrics["ptq_test_accuracy"] = best[0], accuracy(qmodel, data, "test")
        if mode is QuantMode.qat:
            from .train import train_model

            qat = prepare_qat_from_ptq(model, ptq_prepared, recipe["keep_float"])
            epochs_a = max(1, min(config.qat_freeze_epoch, config.qat_epochs))
            epochs_b = config.qat_epochs - epochs_a
            def train_config(epochs: int) -> TrainConfig:
                return TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.qat_lr,
                                   schedule=Schedule.cosine, warmup_epochs=0.0, channels_last=False, cutout=0,
                                   seed=config.seed, eval_batch_size=500, label_smoothing=0.1,
                                   tensorboard=config.tensorboard)
            train_model(qat, data, train_config(epochs_a), reporter=reporter)
            # Observers and BN statistics frozen from here: the last epochs fit the weights to fixed
            # ranges and fixed BN folding, which is what the converted model will have.
            freeze_qat(qat)
            if epochs_b:
                train_model(qat, data, train_config(epochs_b), reporter=reporter)
            qat.eval()
            fake = _accuracies(qat, data)
            metrics["qat_fake_quant_val_accuracy"] = fake["val_accuracy"]
            metrics["qat_fake_quant_test_accuracy"] = fake["test_accuracy"]
            qmodel = convert(qat)
            fold_float_islands(qmodel)
            recipe.update({"qat_epochs": config.qat_epochs, "qat_lr": config.qat_lr,
                           "qat_freeze_epoch": epochs_a,
                           "qat_fake_quant": "non-fused FakeQuantize, weights per-channel symmetric qint8, "
                                             "activations quint8 0..127, started from the PTQ ranges"})
            note = "QAT: fake-quant accuracy and converted int8 accuracy side by side in metrics"
        else:
            note = "static PTQ: per-channel int8 weights, activations calibrated on the calibration set"
    int8 = _accuracies(qmodel, data)
    metrics.update(int8)
    metrics["accuracy_drop_val_pt"] = 100 * (fp32["val_accuracy"] - int8["val_accuracy"])
    metrics["accuracy_drop_test_pt"] = 100 * (fp32["test_accuracy"] - int8["test_accuracy"])
    metrics["latency"] = measure_latency(qmodel, config.threads, config.latency_runs)
    metrics["latency_ms"] = metrics["latency"]["p50_ms"]
    census = int8_census(qmodel)
    metrics["census"] = census
    metrics["macs"] = count_macs(model)
    extra.update({"recipe": recipe, "note": note, "sensitivity": sensitivity})
    save_quantized(out, qmodel, model.spec, data.classes, recipe, extra)
    metrics["file_bytes"] = out.stat().st_size
    metrics["parent_file_bytes"] = source.stat().st_size
    precision = "int8" if census["qint8_tensors"] > 1 else "fp32 + int8 fc"
    write_manifest(out, Manifest(kind="quantized", format="torch", precision=precision, parent=parent_ref(source),
                                 config={"quantize": config}, seed=config.seed, metrics=metrics,
                                 extra={"recipe": recipe, "note": note, "calibration": extra.get("calibration"),
                                        "sensitivity": sensitivity}))
    if mode is not QuantMode.dynamic and config.export_onnx:
        try:
            onnx_path = export_qdq_onnx(out, out.with_suffix(".qdq.onnx"), config.opset)
            write_manifest(onnx_path, Manifest(
                kind="export", format="onnx", precision="int8 (QDQ)", parent=parent_ref(out),
                config={"quantize": config}, seed=config.seed,
                metrics={"ptq_val_accuracy": metrics["ptq_val_accuracy"]},
                extra={"calibration": extra.get("calibration"), "recipe": recipe,
                       "note": "QDQ of this int8 model's own weights and scales (BN folded, int8 initializers)"}))
        except ImportError as exc:
            reporter.info(f"quantize: QDQ ONNX export skipped ({exc})")
    rows = [["mode", mode.value], ["method", recipe.get("method", "-")],
            ["fp32 val / test", f"{fp32['val_accuracy']:.2%} / {fp32['test_accuracy']:.2%}"]]
    if "ptq_val_accuracy" in metrics:
        rows.append(["PTQ int8 val / test", f"{metrics['ptq_val_accuracy']:.2%} / {metrics['ptq_test_accuracy']:.2%}"])
    if "qat_fake_quant_val_accuracy" in metrics:
        rows.append(["QAT fake-quant val / test", f"{metrics['qat_fake_quant_val_accuracy']:.2%} / "
                                                  f"{metrics['qat_fake_quant_test_accuracy']:.2%}"])
    rows += [["int8 val / test", f"{int8['val_accuracy']:.2%} / {int8['test_accuracy']:.2%}"],
             ["qint8 tensors", census["qint8_tensors"]],
             ["file (bytes)", f"{source.stat().st_size:,} -> {metrics['file_bytes']:,}"],
             [f"CPU latency p50 batch 1, {config.threads} thread(s) (ms)",
              f"{fp32_latency['p50_ms']:.3f} -> {metrics['latency_ms']:.3f}"]]
    reporter.table(f"quantize: {out.name}", ["", "value"], rows)
    reporter.info(f"quantize: {note}")
    return QuantizeResult(artifact=out, model=qmodel, metrics=metrics, onnx=onnx_path, sensitivity=sensitivity)
