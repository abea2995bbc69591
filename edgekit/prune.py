"""Structured channel pruning (Torch-Pruning), fine-tuning with the trainer, BN recalibration.

Why structured: removing whole channels shrinks every dense conv, so an ordinary CPU kernel
runs fewer MACs. Zeroing single weights (`unstructured=True`) changes nothing for a dense
kernel; it is offered for comparison and reported as "no dense speed-up".

Why Torch-Pruning: its dependency graph knows which channels must go together, and prunes them
together: in ResNet18 the stem, every block's second conv and every downsample of a stage feed
the same residual additions; in MobileNetV2 a stage's projection convs feed its additions, and a
depthwise conv's channels are its expand conv's (the stem's, in the first block), so a depthwise
conv keeps groups == channels. A hand-written pruner would have to re-derive that coupling.

The flow, per step (`steps` rounds): prune (ratio or MAC target, importance by L1/L2 weight
magnitude, BN scale or Taylor; uniform, tilted over depth (`depth_tilt`) or global; channel counts
rounded to `round_to`) ->
BN recalibration -> fine-tune with `train.train_model` (short, small lr, distilling from the
unpruned model) -> BN recalibration (kept only if it does not lower validation accuracy).

No pickle: the pruned network's conv widths are read back into a plain `ModelSpec` of its
architecture (`spec_of`, one reader per architecture: see edgekit.spec for what the widths mean),
a fresh network of that spec (`build_model`) loads the pruned state dict, its outputs are checked
against the pruned module's, and it is saved with `save_checkpoint`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .artifacts import (Manifest, check_writable_dir, guard_output, parent_ref, publish, remove_path, sha256_file,
                        staging_path, to_plain)
from .config import DataConfig, FinetuneConfig, Importance, PruneConfig
from .data import DataSplits, batches, load_data_for_checkpoint, to_unit_float
from .errors import ConfigError, missing_dependency
from .formats import SOURCE_FORMAT
from .finetune import finetune_model
from .scratch import open_scratch, scratch_dir
from .measure import accuracy, compare_latency, recalibrate_bn
from .mobilenet import MobileNetV2
from .model import (Classifier, ModelSpec, ResNet18, build_model, count_macs, count_parameters, load_checkpoint,
                    save_checkpoint)
from .report import Reporter, quiet


@dataclass
class PruneResult:
    checkpoint: Path
    before: dict[str, Any]
    after: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    spec: ModelSpec | None = None
    max_rebuild_diff: float = 0.0


def model_stats(model: nn.Module, path: Path | None = None) -> dict[str, Any]:
    stats: dict[str, Any] = {"params": count_parameters(model), "macs": count_macs(model)}
    if path is not None:
        stats["file_bytes"] = Path(path).stat().st_size
    return stats


# ---- spec <-> pruned module -------------------------------------------------------------------


def _coupling_bug(what: str) -> RuntimeError:
    # A bug (Torch-Pruning's dependency graph or ours), not a user error: a plain exception keeps
    # its traceback for the report.
    return RuntimeError(f"pruning left {what} (a Torch-Pruning dependency bug; --importance l1 avoids it); "
                        "please report it with this traceback")


def _stage_width(stage: nn.Sequential, last_conv: str) -> int:
    """The one output width of a stage's residual-coupled blocks."""
    widths = {getattr(block, last_conv).out_channels for block in stage}
    if len(widths) != 1:
        raise _coupling_bug("residual-coupled convs with different widths")
    return widths.pop()


def _resnet18_widths(model: ResNet18) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Four stage widths (the stem shares stage 1's) and each BasicBlock's inner width."""
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    stage_channels = tuple(_stage_width(stage, "conv2") for stage in stages)
    if model.conv1.out_channels != stage_channels[0]:
        raise RuntimeError("pruned stem width differs from stage 1: an edgekit bug, please report it with this "
                           "traceback")
    return stage_channels, tuple(block.conv1.out_channels for stage in stages for block in stage)


def _mobilenet_v2_widths(model: MobileNetV2) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stem, seven stage widths and head; each block's expanded width, read at its depthwise conv.

    Torch-Pruning couples a depthwise conv's channels with the expand conv (or, in the first block,
    the stem) that feeds it; a depthwise conv left with groups != channels would be a grouped conv
    the rebuilt network cannot express, so it is refused here rather than at load time."""
    blocks = [block for stage in model.stages for block in stage]
    for block in blocks:
        dw = block.conv2
        if not dw.groups == dw.in_channels == dw.out_channels or (block.expand and block.conv1.out_channels != dw.in_channels):
            raise _coupling_bug(f"a depthwise conv with {dw.in_channels} -> {dw.out_channels} channels in "
                                f"{dw.groups} groups")
    stage_channels = (model.conv1.out_channels, *(_stage_width(stage, "conv3") for stage in model.stages),
                      model.conv2.out_channels)
    return stage_channels, tuple(block.conv2.out_channels for block in blocks)


# What a pruned network's widths read back as, per architecture (edgekit.spec says what they mean).
_WIDTH_READERS = {"resnet18": _resnet18_widths, "mobilenet_v2": _mobilenet_v2_widths}

# Each architecture's stages from input to output, as `depth_tilt` shares out a prune. A stem joins
# the first stage, whose residual (ResNet18) or depthwise (MobileNetV2) channels it is coupled with.
_STAGES = {
    "resnet18": lambda model: [[model.conv1, model.layer1], [model.layer2], [model.layer3], [model.layer4]],
    "mobilenet_v2": lambda model: [[model.conv1, model.stages[0]], *([stage] for stage in model.stages[1:]),
                                   [model.conv2]],
}


def tilt_multipliers(stages: int, tilt: float) -> list[float]:
    """`depth_tilt`'s factor on the ratio for each of `stages` stages: 1 + tilt * (k - m) / m,
    m = (stages - 1) / 2, so their mean is 1 (tilt 0.5 over four: 0.5, 0.83, 1.17, 1.5)."""
    middle = (stages - 1) / 2
    return [1 + tilt * (index - middle) / middle for index in range(stages)]


def stage_ratios(model: Classifier, ratio: float, tilt: float) -> dict[nn.Module, float]:
    """Each conv's pruning ratio under `depth_tilt`: its stage's multiplier times `ratio`, so the
    stages' mean share stays `ratio` (Torch-Pruning caps each at 0.95)."""
    stages = _STAGES[model.spec.arch](model)
    ratios = {}
    for multiplier, parts in zip(tilt_multipliers(len(stages), tilt), stages):
        for part in parts:
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    ratios[module] = ratio * multiplier
    return ratios


def spec_of(model: Classifier, base: ModelSpec) -> ModelSpec:
    """Read the (pruned) conv widths back into a plain ModelSpec of the base's architecture."""
    stage_channels, block_channels = _WIDTH_READERS[base.arch](model)
    spec = dataclasses.replace(base, stage_channels=stage_channels, block_channels=block_channels)
    try:
        spec.check()
    except ValueError as exc:
        raise _coupling_bug(f"widths the architecture cannot take ({exc})") from exc
    return spec


@torch.no_grad()
def rebuild(model: Classifier, base: ModelSpec) -> tuple[Classifier, float]:
    """A fresh network from the pruned widths, loaded with the pruned weights; max output diff."""
    spec = spec_of(model, base)
    fresh = build_model(spec)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    model.eval()
    x = torch.rand(16, *spec.input_shape, generator=torch.Generator().manual_seed(1))
    diff = (fresh(x) - model(x)).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"rebuilt pruned model differs from the pruned module (max |diff| {diff:.3g}); the "
                           "pruned checkpoint was not written. An edgekit bug: please report it with this traceback")
    return fresh, diff


# ---- pruning ----------------------------------------------------------------------------------


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise missing_dependency("torch-pruning", "compress", "structured pruning") from exc
    return tp


def _importance(config: PruneConfig):
    tp = _tp()
    kind = Importance(config.importance)
    if kind is Importance.l1:
        return tp.importance.MagnitudeImportance(p=1)
    if kind is Importance.l2:
        return tp.importance.MagnitudeImportance(p=2)
    if kind is Importance.bn:
        return tp.importance.BNScaleImportance()
    return tp.importance.TaylorImportance()


def _taylor_gradients(model: nn.Module, data: DataSplits, config: PruneConfig) -> None:
    model.zero_grad(set_to_none=True)
    model.train()
    generator = torch.Generator().manual_seed(config.seed)
    for index, (x, y) in enumerate(batches(data.train_x, data.train_y, config.batch_size, generator)):
        if index >= config.taylor_batches:
            break
        nn.functional.cross_entropy(model(to_unit_float(x)), y).backward()
    model.eval()


def validate_config(config: PruneConfig) -> None:
    config.validate()
    if config.target_macs is None:
        if config.ratio is None or not 0.0 < config.ratio < 1.0:
            raise ConfigError(f"--ratio must be between 0 and 1 (exclusive), got {config.ratio}",
                              "e.g. --ratio 0.3 removes 30 % of each layer's channels (about 2x fewer MACs)")
    elif config.target_macs <= 0:
        raise ConfigError(f"--target-macs must be positive, got {config.target_macs}", "e.g. --target-macs 250e6")
    if config.steps < 1 or config.round_to < 1 or config.finetune_epochs < 0:
        raise ConfigError("--steps and --round-to must be >= 1 and --finetune-epochs >= 0", "check the options")
    if config.depth_tilt and (config.global_pruning or config.unstructured):
        raise ConfigError("--depth-tilt sets each stage's share of a uniform prune; "
                          + ("global pruning chooses the shares itself" if config.global_pruning
                             else "unstructured pruning zeroes weights, not stages' channels"),
                          "drop --depth-tilt, or prune uniformly (without --global or --unstructured)")
    if config.depth_tilt and config.target_macs is None and config.ratio * (1 + abs(config.depth_tilt)) > 0.9:
        raise ConfigError(f"--ratio {config.ratio} with --depth-tilt {config.depth_tilt} asks one end stage to lose "
                          f"{config.ratio * (1 + abs(config.depth_tilt)):.0%} of its channels",
                          "keep --ratio x (1 + |--depth-tilt|) at or below 0.9, or prune toward --target-macs")
    if not 0.0 <= config.distill_alpha <= 1.0:
        raise ConfigError(f"--distill must be between 0 and 1, got {config.distill_alpha}",
                          "e.g. --distill 0.5 (half the fine-tune loss from the unpruned model) or 0 (labels only)")


# Settings that do not change the weights a prune trains (where it logs, how it times the result),
# so a run resumed with another value goes on from the interrupted one's epochs.
NOT_TRAINING = frozenset({"latency_runs", "threads", "tensorboard"})


def _finetune(model: Classifier, data: DataSplits, config: PruneConfig, reporter: Reporter,
              teacher: nn.Module | None = None, scratch: Path | None = None) -> dict[str, Any]:
    """One step's fine-tune: a cycle of the recipe `edgekit control` repeats on the parent."""
    plan = FinetuneConfig.of_prune(config)
    plan = dataclasses.replace(plan, cycles=(config.finetune_epochs,),
                               distill_alpha=plan.distill_alpha if teacher is not None else 0.0)
    return finetune_model(model, data, plan, reporter, teacher, scratch)


def prune_model(model: Classifier, data: DataSplits, config: PruneConfig, reporter: Reporter = quiet,
                teacher: nn.Module | None = None, scratch: Path | None = None
                ) -> tuple[Classifier, list[dict[str, Any]]]:
    """Prune `model` in place (structured, Torch-Pruning) with fine-tuning; return it and the history.

    `teacher` (the unpruned model) is distilled from during fine-tuning when `config.distill_alpha > 0`.
    With `scratch` (edgekit.scratch.open_scratch), each step's fine-tune keeps its place there: the
    pruning is deterministic, so a run after an interruption prunes alike up to the step it was in
    (finished steps' fine-tuned weights read back) and goes on from that step's last epoch."""
    validate_config(config)
    tp = _tp()
    torch.manual_seed(config.seed)
    model.eval()
    base_macs = count_macs(model)
    if config.target_macs is not None and config.target_macs >= base_macs:
        raise ConfigError(f"--target-macs {config.target_macs:,} is not below the model's {base_macs:,} MACs",
                          "pass a smaller target, or use --ratio")
    example = torch.rand(1, *model.spec.input_shape)
    by_target = config.target_macs is not None
    # For a MAC target, prune in small increments (fine iterative_steps) and stop at the target;
    # for a ratio, the pruner's own linear schedule reaches it in `steps` rounds.
    end_ratio = 0.9 if by_target else config.ratio  # where the pruner's schedule ends (a target stops it sooner)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=_importance(config), global_pruning=config.global_pruning,
        pruning_ratio=end_ratio, max_pruning_ratio=0.95,
        pruning_ratio_dict=stage_ratios(model, end_ratio, config.depth_tilt) if config.depth_tilt else None,
        iterative_steps=60 if by_target else config.steps, ignored_layers=[model.fc], round_to=config.round_to)
    history: list[dict[str, Any]] = []
    for step in range(1, config.steps + 1):
        if by_target:
            goal = base_macs * (config.target_macs / base_macs) ** (step / config.steps)
            # Taylor scores once per round: Torch-Pruning prunes .grad along with the weights.
            if Importance(config.importance) is Importance.taylor:
                _taylor_gradients(model, data, config)
            while count_macs(model) > goal:
                if pruner.current_step >= pruner.iterative_steps:
                    raise ConfigError(f"cannot reach {config.target_macs:,} MACs (stopped at {count_macs(model):,})",
                                      "pass a larger --target-macs or a smaller --round-to")
                pruner.step()
        else:
            if Importance(config.importance) is Importance.taylor:
                _taylor_gradients(model, data, config)
            pruner.step()
        model.zero_grad(set_to_none=True)
        record: dict[str, Any] = {"step": step, "macs": count_macs(model), "params": count_parameters(model),
                                  "val_accuracy_pruned": accuracy(model, data)}
        if by_target:
            record["pruner_ratio"] = pruner.per_step_pruning_ratio[pruner.current_step - 1] if pruner.current_step else 0
        else:
            record["ratio"] = config.ratio * step / config.steps
        recalibrate_bn(model, data, config.bn_batches, config.batch_size, config.seed)
        record["val_accuracy_bn_recalibrated"] = accuracy(model, data)
        if config.finetune_epochs:
            record.update(_finetune(model, data, config, reporter, teacher,
                                    scratch / f"step{step}" if scratch is not None else None))
        else:
            record["val_accuracy"] = record["val_accuracy_bn_recalibrated"]
        reporter.info(f"prune step {step}/{config.steps}: {record['macs']:,} MACs, {record['params']:,} params, "
                      f"val {record['val_accuracy']:.2%}")
        history.append(record)
    return model.eval(), history


def unstructured_prune(model: Classifier, data: DataSplits, config: PruneConfig, reporter: Reporter = quiet,
                       scratch: Path | None = None) -> tuple[Classifier, list[dict[str, Any]]]:
    """Global magnitude pruning of conv/linear weights to `ratio` zeros; masks held during fine-tuning."""
    import torch.nn.utils.prune as tprune

    validate_config(config)
    if config.ratio is None:
        raise ConfigError("--unstructured needs --ratio (the fraction of weights to zero)", "e.g. --ratio 0.5")
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=config.ratio)
    record: dict[str, Any] = {"step": 1, "ratio": config.ratio, "val_accuracy_pruned": accuracy(model, data)}
    if config.finetune_epochs:
        record.update(_finetune(model, data, config, reporter, scratch=scratch))
    for module, name in params:
        tprune.remove(module, name)
    record["val_accuracy"] = accuracy(model, data)
    record["sparsity"] = weight_sparsity(model)
    record["macs"] = count_macs(model)
    record["params"] = count_parameters(model)
    return model.eval(), [record]


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


def prune_checkpoint(source: Path, config: PruneConfig, out: Path, reporter: Reporter = quiet,
                     data_config: DataConfig | None = None, data: DataSplits | None = None,
                     force: bool = False) -> PruneResult:
    """Prune an edgekit checkpoint, fine-tune, rebuild from plain channel counts, save + manifest.

    Under torchrun every rank prunes alike and the fine-tunes run data-parallel (train_model); rank 0
    alone then measures latency and writes, the others return what they share."""
    validate_config(config)
    source, out = Path(source), Path(out)
    if config.tensorboard is not None:
        check_writable_dir(config.tensorboard, create=False)
    world = distributed.setup_for_default_device()
    if world.is_main:  # its write probe is a write
        guard_output(out, "pruned", sources=(source,), force=force)
    checkpoint = load_checkpoint(source)
    with distributed.main_first():  # rank 0 may write the decoded-image cache
        data = data if data is not None else load_data_for_checkpoint(checkpoint, data_config, reporter)
    model = checkpoint.build()
    before = model_stats(model, source)
    original = copy.deepcopy(model)
    before["val_accuracy"] = accuracy(model, data)
    before["test_accuracy"] = accuracy(model, data, "test")
    reporter.info(f"prune: {source.name}: {before['macs']:,} MACs, {before['params']:,} params, "
                  f"val {before['val_accuracy']:.2%}")

    scratch = None
    if config.finetune_epochs:
        job = {"job": "prune", "source_sha256": sha256_file(source), "data": data.describe(),
               "config": {k: v for k, v in to_plain(config).items() if k not in NOT_TRAINING}}
        scratch = open_scratch(scratch_dir(out), job, reporter)
    if config.unstructured:
        model, history = unstructured_prune(model, data, config, reporter, scratch)
        spec, diff = checkpoint.spec, 0.0
        fresh = model
    else:
        teacher = copy.deepcopy(original) if config.distill_alpha > 0 else None
        model, history = prune_model(model, data, config, reporter, teacher, scratch)
        fresh, diff = rebuild(model, checkpoint.spec)
        spec = fresh.spec
    after = model_stats(fresh)
    if not world.is_main:
        return PruneResult(checkpoint=out, before=before, after=after, history=history, spec=spec, max_rebuild_diff=diff)
    latency = compare_latency({"before": original, "after": fresh}, config.threads, config.latency_runs)
    before["latency"], after["latency"] = latency["before"], latency["after"]
    after["val_accuracy"] = accuracy(fresh, data)
    after["test_accuracy"] = accuracy(fresh, data, "test")
    if config.unstructured:
        after["sparsity"] = weight_sparsity(fresh)
    metrics = {
        "val_accuracy": after["val_accuracy"], "test_accuracy": after["test_accuracy"],
        "val_accuracy_before": before["val_accuracy"], "test_accuracy_before": before["test_accuracy"],
        "macs_before": before["macs"], "macs_after": after["macs"], "macs_reduction": before["macs"] / after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "latency_ms_before": before["latency"]["p50_ms"], "latency_ms_after": after["latency"]["p50_ms"],
        "speedup": before["latency"]["p50_ms"] / after["latency"]["p50_ms"],
        "rebuild_max_abs_diff": diff,
    }
    note = ("unstructured: weights zeroed in place; the dense model has the same shape, MACs and latency "
            "(no dense speed-up; only sparse kernels or compression could use the zeros)"
            if config.unstructured else "structured: channels removed; the rebuilt dense model is smaller and faster")
    if config.unstructured:
        metrics["sparsity"] = after["sparsity"]
    extra = {"data_config": checkpoint.extra.get("data_config") if data_config is None else to_plain(data_config),
             "data": data.describe(), "metrics": metrics, "prune_config": to_plain(config),
             "prune_history": history, "parent": parent_ref(source), "note": note}
    staged = staging_path(out)
    try:
        save_checkpoint(staged, fresh, data.classes, extra)
        after["file_bytes"] = staged.stat().st_size
        publish(staged, out, Manifest(
            kind="pruned", format=SOURCE_FORMAT.name, precision="fp32", parent=parent_ref(source),
            config={"prune": config}, seed=config.seed, metrics=metrics,
            extra={"note": note, "spec": spec.to_dict(), "prune_history": history, "before": before, "after": after}))
        if scratch is not None:
            remove_path(scratch)  # written: nothing left to resume
    finally:
        remove_path(staged)
    reporter.table(f"prune: {out.name}", ["", "before", "after"], [
        ["params", before["params"], after["params"]],
        ["MACs", before["macs"], after["macs"]],
        ["file (bytes)", before["file_bytes"], after["file_bytes"]],
        [f"CPU latency p50, batch 1, {config.threads} thread(s) (ms)",
         round(before["latency"]["p50_ms"], 3), round(after["latency"]["p50_ms"], 3)],
        ["val accuracy", f"{before['val_accuracy']:.2%}", f"{after['val_accuracy']:.2%}"],
        ["test accuracy", f"{before['test_accuracy']:.2%}", f"{after['test_accuracy']:.2%}"],
    ] + ([["weight sparsity", "", f"{after['sparsity']:.1%}"]] if config.unstructured else []))
    reporter.info(f"prune: {note}")
    return PruneResult(checkpoint=out, before=before, after=after, history=history, spec=spec, max_rebuild_diff=diff)
