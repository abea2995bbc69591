"""The int8 model and its file format: a leaf under the quantize stage, formats and bench.

Everything that defines what an edgekit int8 artifact *is* lives here, so that the stage that
makes one (quantize.py), the formats that export or run one (formats/*) and the benchmark read
the same definition without importing each other: the quantizable network (residual adds as
FloatFunctional ops, float "islands"), fusion, prepare and convert, save/load, detection, and the
two float twins exporters start from (a fake-quant twin for the ONNX QDQ graph, a dequantized
checkpoint for TFLite and TensorRT). Nothing here imports a stage or a format.

Both architectures go through the same code: what differs is read from the network itself, its
conv+BN(+activation) groups (`fusion_groups()`) and its residual adds (`residual_adds()`: add +
ReLU as one op in ResNet18, a plain add after MobileNetV2's linear bottlenecks). MobileNetV2's
ReLU6 is fused with its conv (edgekit.qrelu6), not left as its own int8 clamp, measured on a
width-0.25 MobileNetV2 trained as tests/conftest.py's (a one-thread run, 77.5 % validation; 600
images, static PTQ, x86): with minmax calibration, fused, int8 agrees with fp32 on
91.8 % of top-1 answers (logit cosine 0.9915) and the QDQ ONNX with torch int8 on 92.8 %; as a
separate clamp 88.2 % (0.9846) and 90.8 %. With mse calibration 91.5 % either way (cosine 0.9928
fused, 0.9903 apart). ReLU6 is never replaced by ReLU: that would change a trained model.

API choice, and why (torch 2.13/2.14):
- Eager mode `torch.ao.quantization` (QuantStub/DeQuantStub, fuse_modules, prepare/convert,
  x86 backend). It is deprecated in favour of PT2E but still works in 2.13/2.14, and on this
  model it is the path that works end to end: torchao's PT2E `X86InductorQuantizer` QAT failed
  on ResNet18 here ("Input partition has more than one output node"), and PT2E lives in
  torchao, a separate install. The models were written for eager mode (residual Add as a module,
  fusion groups), so the swap to a quantizable add is one module per block. The deprecation is a
  known dead-end: when eager mode is removed, the replacement is torchao PT2E
  (prepare_pt2e/convert_pt2e with X86InductorQuantizer) once its QAT handles ResNet18.
- QAT uses *non-fused* `FakeQuantize` modules (weights qint8 -128..127 per-channel symmetric,
  activations quint8), not the default fused `fused_moving_avg_obs_fake_quant`: the legacy
  ONNX exporter writes the non-fused ones as QuantizeLinear/DequantizeLinear pairs that match
  torch's fake-quant output; the fused op and the dynamo exporter did not export.
- The engine (`backend`): its qconfigs, fusions and kernels, and why a file runs only under its
  own, are in edgekit/qengine.py.

Saving without pickle: a converted model's state dict is tensors (qint8/quint8 quantized
tensors, scales, zero points, packed Linear params) that load with weights_only=True. The file
stores it with the ModelSpec and a description of the quantization recipe (mode, backend,
float-kept layers); loading replays fuse/prepare/convert on a fresh model and loads the state.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import qrelu6
from .artifacts import atomic_torch_save, to_plain
from .config import QuantBackend, QuantMode, WeightScheme
from .errors import CheckpointError, UnsupportedError
# The compact tensors of the file live in edgekit.qpack; named here too, with the rest of the file format.
from .qpack import PACKED_QTENSOR, pack_qtensors, unpack_qtensors  # noqa: F401
from .qengine import (_aoq, artifact_engine, artifact_per_channel, engine_fusers, qat_qconfig, quantized_engine,
                      set_backend, static_qconfig)
from .model import (QUANTIZED_FORMAT, Checkpoint, Classifier, ModelSpec, build_model, load_checkpoint, load_plain,
                    read_payload)

# Eager torch.ao.quantization is the deliberate int8 path (see above), so its deprecation notice,
# and that one alone, is not repeated at every command; every other deprecation stays visible.
warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*", category=DeprecationWarning)


# ---- a quantizable network (ResNet18 or MobileNetV2) --------------------------------------------


class QuantAdd(nn.Module):
    """The residual add as one FloatFunctional op, its sum requantized: `add` for MobileNetV2's
    linear bottlenecks, `add_relu` (quantized: one fused kernel) where a ReLU follows, as in ResNet18."""

    def __init__(self, with_relu: bool = False) -> None:
        super().__init__()
        self.op = torch.ao.nn.quantized.FloatFunctional()
        self.with_relu = with_relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.op.add_relu(a, b) if self.with_relu else self.op.add(a, b)


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


class QuantModel(nn.Module):
    """A network build_model makes, with quant/dequant stubs: normalize in float, everything after it int8.

    What differs between architectures is read from the network itself: its conv+BN(+ReLU)
    fusion groups (`fusion_groups()`) and its residual adds (`residual_adds()`), each made one
    quantizable op (add, or add + ReLU)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        aoq = _aoq()
        self.spec = model.spec
        self.quant = aoq.QuantStub()
        self.model = model
        self.dequant = aoq.DeQuantStub()
        for add, relu in model.residual_adds():
            _replace(model, add, QuantAdd(with_relu=relu is not None))
            if relu:
                _replace(model, relu, nn.Identity())
        # Normalize stays float (it is x*scale+shift on the float input); the stub quantizes after it.
        self.normalize = model.normalize
        model.normalize = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(self.normalize(x))))


def quantizable(model: Classifier, qat: bool = False, backend: str = QuantBackend.x86.value) -> QuantModel:
    """Wrap + fuse a float network (copied) for eager-mode quantization, with the engine's fusers."""
    aoq = _aoq()
    model = copy.deepcopy(model)
    wrapped = QuantModel(model)
    custom = {"additional_fuser_method_mapping": {**engine_fusers(backend),
                                                  qrelu6.PATTERN: qrelu6.fuse_conv_bn_relu6}}
    wrapped.train(qat)
    fuse = aoq.fuse_modules_qat if qat else aoq.fuse_modules
    fuse(model, model.fusion_groups(), inplace=True, fuse_custom_config_dict=custom)
    return wrapped


def layer_names(wrapped: QuantModel) -> list[str]:
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


# ---- building int8 models ---------------------------------------------------------------------


def _mark_islands(wrapped: QuantModel, keep_float: list[str], only_int8: list[str] | None) -> None:
    """keep_float: these layers run float inside an int8 model; only_int8: only these run int8."""
    if only_int8 is not None:
        wrapped.qconfig = None
        wrapped.quant = nn.Identity()
        wrapped.dequant = nn.Identity()
        for name in only_int8:
            _replace(wrapped.model, name, Island(wrapped.model.get_submodule(name), float_inside=False))
        for add, relu in wrapped.model.residual_adds():
            _replace(wrapped.model, add, _FloatAdd(relu=relu is not None))
        return
    for name in keep_float:
        inner = wrapped.model.get_submodule(name)
        inner.qconfig = None
        _replace(wrapped.model, name, Island(inner, float_inside=True))


class _FloatAdd(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.relu(a + b) if self.relu else a + b


def prepare_static(model: Classifier, qconfig, keep_float: list[str] = (), only_int8: list[str] | None = None,
                   backend: str = QuantBackend.x86.value) -> QuantModel:
    aoq = _aoq()
    wrapped = quantizable(model, backend=backend)
    wrapped.qconfig = qconfig
    _mark_islands(wrapped, list(keep_float), only_int8)
    if only_int8 is not None:
        for name in only_int8:
            wrapped.model.get_submodule(name).qconfig = qconfig
    aoq.prepare(wrapped, inplace=True)
    return wrapped

def prepare_qat(wrapped: QuantModel, twin: bool = False) -> None:
    """torch's prepare_qat in place, with edgekit's Conv+BN+ReLU6 among the QAT modules (`twin`: in
    the QDQ form of the fake-quant twin, edgekit.qrelu6.QDQConvReLU6)."""
    aoq = _aoq()
    aoq.prepare_qat(wrapped, mapping=qrelu6.qat_mapping(aoq.get_default_qat_module_mappings(), twin), inplace=True)


def convert(prepared: nn.Module) -> nn.Module:
    aoq = _aoq()
    return aoq.convert(prepared.eval(), mapping=qrelu6.int8_mapping(aoq.get_default_static_quant_module_mappings()),
                       inplace=False)

def dynamic_quantize(model: Classifier) -> nn.Module:
    """torch dynamic int8: only nn.Linear (and RNNs) have dynamic kernels; in both networks that is `fc`."""
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

# ---- save / load ------------------------------------------------------------------------------

def save_quantized(path: Path, model: nn.Module, spec: ModelSpec, classes: list[str], recipe: dict[str, Any],
                   extra: dict[str, Any]) -> Path:
    state = model.state_dict()
    # Module versions decide how quantized modules parse their state (e.g. packed Linear params);
    # stored as plain data beside the tensors rather than as an attribute of a pickled dict.
    versions = {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}
    atomic_torch_save({"format": QUANTIZED_FORMAT, "spec": spec.to_dict(), "classes": list(classes),
                       "recipe": to_plain(recipe),
                       "state_dict": {name: pack_qtensors(value) for name, value in state.items()},
                       "state_metadata": versions,
                       "extra": to_plain(extra)}, path)
    return Path(path)


def is_quantized_artifact(path: str | Path) -> bool:
    """Whether `path` is an edgekit int8 file (damaged or not: its loader then says what is wrong)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        payload = load_plain(path)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == QUANTIZED_FORMAT


def checked_recipe(payload: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The recipe of a checked int8 payload (read_payload), refused in one line when its mode or engine is unknown."""
    recipe = dict(payload["recipe"])
    if recipe.get("mode") not in {m.value for m in QuantMode}:
        raise CheckpointError(f"{path} is an edgekit int8 model whose recipe has no valid 'mode' "
                              f"(found {recipe.get('mode')!r}): damaged or edited", "re-create it with `edgekit quantize`")
    artifact_engine(recipe)  # an unknown engine is refused here, in one line
    if recipe.get("weights", WeightScheme.engine.value) not in {w.value for w in WeightScheme}:
        raise CheckpointError(f"{path} is an edgekit int8 model whose recipe names an unknown weight scheme "
                              f"{recipe.get('weights')!r}: damaged or edited", "re-create it with `edgekit quantize`")
    return recipe


def is_dynamic(recipe: dict[str, Any] | None) -> bool:
    """Whether an int8 recipe is dynamic (only the fc layer int8, activations quantized on the fly):
    such a model has no activation ranges, so no QDQ graph and no int8 file of another format."""
    return bool(recipe) and recipe.get("mode") == QuantMode.dynamic.value


def refuse_dynamic(path: str | Path, recipe: dict[str, Any] | None) -> None:
    if is_dynamic(recipe):
        raise UnsupportedError(f"{Path(path).name} is a dynamic-int8 model (only fc is int8); it has no activation "
                               "ranges for an int8 file of another format to keep",
                               "export its fp32 parent, or quantize with --mode static or qat")


def artifact_recipe(path: str | Path) -> dict[str, Any] | None:
    """The quantization recipe of an edgekit int8 artifact (mode, backend, ...), None for any other file."""
    if not is_quantized_artifact(path):
        return None
    return checked_recipe(read_payload(path, QUANTIZED_FORMAT), path)


def torch_artifact_spec(path: str | Path) -> tuple[ModelSpec, dict[str, Any], bool]:
    """(architecture, extra, is_int8) of an edgekit torch file, a float checkpoint or an int8
    artifact alike, without rebuilding an int8 model: for `edgekit info` and `export --source`."""
    if is_quantized_artifact(path):
        payload = read_payload(path, QUANTIZED_FORMAT)
        return ModelSpec.from_dict(payload["spec"]), dict(payload.get("extra") or {}), True
    checkpoint = load_checkpoint(path)
    return checkpoint.spec, dict(checkpoint.extra), False


def load_quantized(path: str | Path, payload: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an int8 model by replaying its recipe on a fresh model, then loading its tensors.

    `payload`: the file's checked payload when the caller has read it already (read_payload), so
    the file is not loaded again. Leaves torch's quantized engine set to the file's
    (artifact_engine); a runner that shares the process with other engines' files runs under
    `quantized_engine(...)` per call."""
    path = Path(path)
    payload = read_payload(path, QUANTIZED_FORMAT) if payload is None else payload
    recipe = payload["recipe"] = checked_recipe(payload, path)
    spec = ModelSpec.from_dict(payload["spec"])
    if not isinstance(recipe.get("keep_float", []), list):
        raise CheckpointError(f"{path}: its recipe's 'keep_float' is not a list of layers", "re-create the file")
    # The engine current while the state loads is the one conv weights get packed for: the file's own.
    engine = artifact_engine(recipe).value
    set_backend(engine)
    float_model = build_model(spec).eval()
    if is_dynamic(recipe):
        model = dynamic_quantize(float_model)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncalibrated observers warn; their values are overwritten below
            try:
                prepared = prepare_static(float_model, static_qconfig(backend=engine,
                                                                      per_channel=artifact_per_channel(recipe)),
                                          recipe.get("keep_float", []), backend=engine)
            except (AttributeError, KeyError, TypeError) as exc:  # a keep_float layer this model does not have
                raise CheckpointError(f"{path}: its recipe keeps layers in float that the model does not have ({exc})",
                                      "re-create the file with `edgekit quantize`") from exc
            model = convert(prepared)
    try:
        state = OrderedDict((name, unpack_qtensors(value)) for name, value in payload["state_dict"].items())
        state._metadata = OrderedDict(payload.get("state_metadata", {}))  # type: ignore[attr-defined]
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 -- packed params parse their own entries, each failing its own way
        raise CheckpointError(f"{path}: its int8 tensors do not fit the recorded model (damaged or edited: "
                              f"{type(exc).__name__})", "re-create it with `edgekit quantize`") from exc
    return model.eval(), payload


def int8_as_fake_quant(qmodel: nn.Module, spec: ModelSpec, recipe: dict[str, Any]) -> QuantModel:
    """A float fake-quant twin of a converted int8 model: its int8 weights and scales, nothing re-measured.

    Built from the converted model alone (so from any int8 artifact on disk, PTQ or QAT): the
    same fused graph is prepared with the engine's non-fused FakeQuantize modules, then every weight
    fake-quant takes the module's int8 weight (dequantized: exactly on the int8 grid) with its scales
    (per channel for x86/fbgemm, per tensor for qnnpack), and every activation fake-quant takes the
    module's output scale and zero point.
    Exported through the TorchScript ONNX exporter, that is a QDQ graph of the very numbers the
    torch int8 model computes with.
    """
    aoq = _aoq()
    engine = artifact_engine(recipe).value
    wrapped = quantizable(build_model(spec).eval(), backend=engine)
    wrapped.qconfig = qat_qconfig(engine, artifact_per_channel(recipe))
    _mark_islands(wrapped, list(recipe.get("keep_float", [])), None)
    wrapped.train()
    prepare_qat(wrapped, twin=True)
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
                if weight.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
                    scale, zero = weight.q_per_channel_scales().float(), weight.q_per_channel_zero_points()
                    fake.ch_axis = int(weight.q_per_channel_axis())
                else:  # qnnpack: one scale per tensor
                    scale = torch.tensor([float(weight.q_scale())])
                    zero = torch.tensor([int(weight.q_zero_point())], dtype=torch.int32)
            else:
                scale = torch.tensor([float(owner.scale)])
                zero = torch.tensor([int(owner.zero_point)], dtype=torch.int32)
            fake.scale.resize_(scale.shape).copy_(scale)
            fake.zero_point.resize_(zero.shape).copy_(zero.to(fake.zero_point.dtype))
            fake.disable_observer()
        qrelu6.wrap_twin_fake_quants(wrapped)
        _fake_quant_classifier_input(wrapped, qmodel, spec, engine)
        for island_name, island in wrapped.named_modules():
            if isinstance(island, Island) and isinstance(island.enter, aoq.DeQuantStub):
                # a float-kept layer: its float weights (BN folded, as in the int8 file) as they are
                island.inner.load_state_dict(converted[island_name + ".inner"].state_dict())
    return wrapped.eval()


def _fake_quant_classifier_input(twin: QuantModel, qmodel: nn.Module, spec: ModelSpec, engine: str) -> None:
    """The twin's fc reads its input through the int8 model's grid for it, as the int8 model does
    (quantized average pooling rounds the pooled features to its input's grid). Without it ONNX
    Runtime ran fc as a float Gemm (Flatten, not DequantizeLinear, fed it): 2 % of a width-0.25
    MobileNetV2's weights (1280-wide head); with it, QGemm."""
    grid: dict[str, Any] = {}

    def record(_module: nn.Module, args: tuple) -> None:
        grid.update(scale=args[0].q_scale(), zero_point=args[0].q_zero_point())

    handle = qmodel.model.fc.register_forward_pre_hook(record)
    try:
        with torch.no_grad(), quantized_engine(engine):
            qmodel(torch.zeros(1, *spec.input_shape))
    finally:
        handle.remove()
    fake = qat_qconfig(engine).activation()
    fake.scale.copy_(torch.tensor([grid["scale"]]))
    fake.zero_point.copy_(torch.tensor([grid["zero_point"]], dtype=fake.zero_point.dtype))
    fake.disable_observer()
    twin.model.fc.input_fake_quant = fake
    twin.model.fc.register_forward_pre_hook(_through_input_fake_quant)


def _through_input_fake_quant(module: nn.Module, args: tuple) -> tuple:
    return (module.input_fake_quant(args[0]), *args[1:])


def dequantized_checkpoint(path: Path, loaded: tuple[nn.Module, dict[str, Any]] | None = None) -> Checkpoint:
    """An int8 artifact as a float checkpoint: its int8 weights dequantized, BN already folded into them.

    For exporters that quantize with their own tools (TFLite's converter, TensorRT's QDQ), so
    their int8 files start from the very weights of the int8 model; their activation ranges come
    from the shared calibration set again. Each BatchNorm becomes an identity that carries the
    folded bias (weight 1, mean 0, variance 1 - eps). `loaded`: the file's (model, payload) from
    load_quantized when the caller has it already; the int8 model is only read.
    """
    qmodel, payload = loaded if loaded is not None else load_quantized(path)
    recipe = payload["recipe"]
    refuse_dynamic(path, recipe)
    spec = ModelSpec.from_dict(payload["spec"])
    twin = int8_as_fake_quant(qmodel, spec, recipe)
    model = build_model(spec).eval()

    def float_conv(name: str) -> nn.Module:
        module = twin.model.get_submodule(name)
        module = module.inner if isinstance(module, Island) else module
        # a float fused ConvReLU2d is a Sequential(conv, relu); a QAT one is itself the conv
        return module if isinstance(getattr(module, "weight", None), torch.Tensor) else module[0]

    with torch.no_grad():
        for conv_name, bn_name, *_ in model.fusion_groups():
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
