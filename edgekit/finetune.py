"""Fine-tuning trained weights, and the control that keeps a fine-tuned child honest.

Pruning and QAT both train their child for a few more epochs. A parent that was not trained to
convergence gains from any extra epochs, so a child that beats its parent may owe the gain to the
training, not to the compression. The control is the parent put through the child's very
fine-tune (`FinetuneConfig.of_prune` / `of_qat`: the same cycles, learning rate, batch, seed,
distillation from the parent's own logits, BN recalibration), and the child is read against it.

    edgekit control artifacts/pruned.pt     # writes artifacts/pruned.control.pt beside it

A fine-tune is hours on a CPU at full width, so it keeps its place: every epoch's training state
and every finished cycle go to a scratch folder beside the output (OUT.finetune/, made for that one
job: source file, recipe and data; edgekit.scratch, which QAT uses too). Run the same command again
after an interruption and it goes on from the last finished epoch, to the same weights an
uninterrupted run ends on; the folder is removed once the output is written.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from . import distributed
from .artifacts import (Manifest, guard_output, parent_ref, publish, read_manifest, remove_path, sha256_file,
                        staging_path, to_plain)
from .config import DataConfig, FinetuneConfig, PruneConfig, QuantizeConfig, QuantMode, changed_fields
from .data import DataSplits, load_data_for_checkpoint
from .errors import CheckpointError, ConfigError
from .formats import SOURCE_FORMAT
from .measure import accuracy, recalibrate_bn
from .model import ResNet18, load_checkpoint, save_checkpoint
from .report import Reporter, quiet
from .scratch import kept_or_trained, open_scratch, scratch_dir

CONTROL_SUFFIX = ".control"  # artifacts/pruned.pt -> artifacts/pruned.control.pt


def finetune_model(model: ResNet18, data: DataSplits, plan: FinetuneConfig, reporter: Reporter = quiet,
                   teacher: nn.Module | None = None, scratch: Path | None = None) -> dict[str, Any]:
    """Train `model` in place through the plan's cycles (each ends on its best-by-validation
    weights); after each, re-measure BN statistics if the plan says so, kept only when validation
    accuracy does not drop. Returns what a manifest records of it.

    With `scratch` (a folder from edgekit.scratch.open_scratch), each epoch's training state and
    each finished cycle are kept there, and a call that finds them goes on from where the last one
    stopped (edgekit.scratch.kept_or_trained)."""
    from .train import train_model

    best, val = 0.0, None
    for index, epochs in enumerate(plan.cycles):
        def train(state: Path | None, resume: bool, epochs: int = epochs) -> dict[str, Any]:
            best = train_model(model, data, plan.train_config(epochs), reporter=reporter, teacher=teacher,
                               state_path=state, resume=resume).best_val_accuracy
            return {"best_val": best, "val_accuracy": _recalibrated_if_better(model, data, plan)}

        record = kept_or_trained(scratch, index, len(plan.cycles), model, train, reporter)
        best, val = record["best_val"], record["val_accuracy"]
    return {"finetune_epochs": plan.epochs, "finetune_best_val": best, "distill_alpha": plan.distill_alpha,
            "val_accuracy": accuracy(model, data) if val is None else val}


def _recalibrated_if_better(model: ResNet18, data: DataSplits, plan: FinetuneConfig) -> float:
    """Re-measure BN statistics (if the plan says so), kept only when validation accuracy does not
    drop; the validation accuracy of what is kept."""
    before = accuracy(model, data)
    if not plan.bn_batches:
        return before
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, data, plan.bn_batches, plan.batch_size, plan.seed)
    after = accuracy(model, data)
    if after < before:  # the trainer's running stats were already better
        model.load_state_dict(state)
    return max(before, after)


def plan_of(child: Path, manifest: dict[str, Any]) -> FinetuneConfig:
    """The fine-tune a child's manifest records, as a FinetuneConfig for its parent."""
    config = manifest.get("config") or {}
    if "prune" in config:
        prune = _from_plain(PruneConfig, config["prune"])
        if prune.finetune_epochs and not prune.unstructured:
            return FinetuneConfig.of_prune(prune)
    if "quantize" in config:
        quantize = _from_plain(QuantizeConfig, config["quantize"])
        if QuantMode(quantize.mode) is QuantMode.qat:
            return FinetuneConfig.of_qat(quantize)
    raise ConfigError(f"{child} was not fine-tuned (its manifest says kind '{manifest.get('kind', '?')}', no "
                      "training), so it needs no control", "pass a file made by `edgekit prune` with --finetune-epochs > 0 or by "
                      "`edgekit quantize --mode qat`")


# Where a run's scalars went is not part of how it trained.
NOT_PLAN = frozenset({"tensorboard"})


def control_mismatch(control: Path, child: Path, plan: FinetuneConfig) -> str | None:
    """Why `control` is not a control for `child` fine-tuned by `plan`, or None when it is.

    A control is the child's parent put through the child's fine-tune; it does not depend on what
    was pruned or quantized. So one made for another child of the same parent with the same plan
    (another pruning target, say) serves this child too, and a second full fine-tune is not needed."""
    manifest = read_manifest(control)
    if manifest.get("kind") != "control":
        return f"{control.name} is not a control (its manifest says kind '{manifest.get('kind', '?')}')"
    parent = (read_manifest(child).get("parent") or {}).get("sha256")
    if (manifest.get("parent") or {}).get("sha256") != parent:
        return f"{control.name} was fine-tuned from another parent than {child.name}'s"
    recorded = (manifest.get("config") or {}).get("finetune") or {}
    differs = changed_fields(recorded, to_plain(plan), to_plain(FinetuneConfig()), NOT_PLAN)
    return f"{control.name} was fine-tuned differently ({', '.join(sorted(differs))})" if differs else None


def _from_plain(cls, values: dict[str, Any]):
    return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def default_output(child: Path) -> Path:
    return child.with_name(child.stem + CONTROL_SUFFIX + child.suffix)


def _parent_of(child: Path, manifest: dict[str, Any], parent: Path | None) -> Path:
    recorded = manifest.get("parent") or {}
    where = ""
    if parent is None:
        if not recorded.get("path"):
            raise CheckpointError(f"{child}'s manifest names no parent", "pass --parent with the file it was made from")
        parent, where = Path(recorded["path"]), " (as its manifest records it)"
    if not parent.is_file():
        raise CheckpointError(f"{child}'s parent {parent}{where} is {'a folder' if parent.is_dir() else 'missing'}",
                              "pass --parent with the checkpoint the child was made from")
    if recorded.get("sha256") and sha256_file(parent) != recorded["sha256"]:
        raise CheckpointError(f"{parent} is not the file {child} was made from (its sha256 differs from the one "
                              "in the child's manifest)", "pass --parent with the file it was made from")
    return parent


@dataclass
class ControlResult:
    checkpoint: Path
    plan: FinetuneConfig
    metrics: dict[str, Any]


def control_checkpoint(child: Path, out: Path | None = None, parent: Path | None = None,
                       cpu_bf16: bool | None = None, reporter: Reporter = quiet,
                       data_config: DataConfig | None = None, data: DataSplits | None = None,
                       force: bool = False) -> ControlResult:
    """Fine-tune `child`'s fp32 parent exactly as the child was fine-tuned; save it with the
    parent's, the control's and the child's accuracies side by side.

    `cpu_bf16` overrides the recipe's arithmetic only (QAT trains in fp32; a bf16 control of it
    costs a third of the time and is recorded as such).

    Under torchrun the fine-tune runs data-parallel (train_model) and rank 0 alone measures the test
    split and writes; the other ranks return what they share (the plan, the parent's accuracies)."""
    child = Path(child)
    manifest = read_manifest(child)
    plan = plan_of(child, manifest)
    if cpu_bf16 is not None:
        plan = dataclasses.replace(plan, cpu_bf16=cpu_bf16)
    parent = _parent_of(child, manifest, Path(parent) if parent is not None else None)
    out = Path(out) if out is not None else default_output(child)
    world = distributed.setup_for_default_device()
    if world.is_main:  # its write probe is a write
        guard_output(out, "control", sources=(child, parent), force=force)
    checkpoint = load_checkpoint(parent)
    with distributed.main_first():  # rank 0 may write the decoded-image cache
        data = data if data is not None else load_data_for_checkpoint(checkpoint, data_config, reporter)
    model = checkpoint.build()
    metrics: dict[str, Any] = {"parent_val_accuracy": accuracy(model, data),
                               "parent_test_accuracy": accuracy(model, data, "test")}
    reporter.info(f"control: {parent.name} fine-tuned as {child.name} was: {plan.epochs} epoch(s) in cycles "
                  f"{list(plan.cycles)}, lr {plan.lr:g}, distill {plan.distill_alpha:g}, "
                  f"{'bf16' if plan.cpu_bf16 else 'fp32'}")
    teacher = copy.deepcopy(model).eval() if plan.distill_alpha > 0 else None
    scratch = open_scratch(scratch_dir(out), {"job": "control", "parent_sha256": sha256_file(parent),
                                              "plan": plan, "data": data.describe()}, reporter)
    record = finetune_model(model, data, plan, reporter, teacher, scratch)
    model.eval()
    if not world.is_main:
        return ControlResult(checkpoint=out, plan=plan, metrics=metrics)
    child_metrics = manifest.get("metrics") or {}
    metrics.update(val_accuracy=record["val_accuracy"], test_accuracy=accuracy(model, data, "test"),
                   finetune_best_val=record["finetune_best_val"],
                   child_val_accuracy=child_metrics.get("val_accuracy"),
                   child_test_accuracy=child_metrics.get("test_accuracy"))
    for split in ("val", "test"):
        if metrics[f"child_{split}_accuracy"] is not None:
            metrics[f"child_minus_control_{split}_pt"] = 100 * (metrics[f"child_{split}_accuracy"]
                                                                - metrics[f"{split}_accuracy"])
    note = (f"control for {child}: its parent fine-tuned with the child's recipe; read the child against this, "
            "not against the parent, to see what compression costs apart from the extra training")
    staged = staging_path(out)
    try:
        save_checkpoint(staged, model, data.classes, {"data_config": checkpoint.extra.get("data_config"),
                                                      "data": data.describe(), "metrics": metrics,
                                                      "parent": parent_ref(parent), "note": note})
        publish(staged, out, Manifest(kind="control", format=SOURCE_FORMAT.name, precision="fp32",
                                      parent=parent_ref(parent), config={"finetune": plan}, seed=plan.seed,
                                      metrics=metrics, extra={"child": parent_ref(child), "note": note}))
        remove_path(scratch)  # written: nothing left to resume
    finally:
        remove_path(staged)
    rows = [["parent", f"{metrics['parent_val_accuracy']:.2%}", f"{metrics['parent_test_accuracy']:.2%}"],
            ["control (parent fine-tuned alike)", f"{metrics['val_accuracy']:.2%}", f"{metrics['test_accuracy']:.2%}"]]
    if metrics["child_test_accuracy"] is not None:
        rows.append([f"child ({child.name})", f"{metrics['child_val_accuracy']:.2%}",
                     f"{metrics['child_test_accuracy']:.2%}"])
    reporter.table(f"control: {out.name}", ["", "val accuracy", "test accuracy"], rows)
    if "child_minus_control_test_pt" in metrics:
        reporter.info(f"control: the child is {metrics['child_minus_control_test_pt']:+.2f} pt against the control "
                      f"on test ({100 * (metrics['test_accuracy'] - metrics['parent_test_accuracy']):+.2f} pt of "
                      "it is the fine-tune alone)")
    return ControlResult(checkpoint=out, plan=plan, metrics=metrics)
