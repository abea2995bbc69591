"""How should a MAC budget be spread over ResNet18's layers? Allocations before any fine-tune.

Every compress study prunes each layer by the same share of channels (`edgekit prune`'s uniform
L1), and the importance probe found that letting Torch-Pruning rank channels globally starts
worse. This probe asks the other half of the question: keeping L1 ranking within each layer, does
another split of the same budget start better? ResNet18 has two kinds of width: each stage's
residual width (the stem, every block's second conv and the downsample feed the same additions,
so they are pruned together) and each block's inner width (its first conv's output). An
allocation here is a pair of multipliers (residual, inner) on a base ratio and a tilt over depth
(positive: later stages lose more); the base ratio is set, per allocation, to the largest that
keeps the network at or under the MAC target. Every candidate is then read with no fine-tune
(BN statistics recalibrated, as `edgekit prune` does), beside `edgekit prune` itself toward the
same target at each tilt (`--depth-tilt`, which steps every stage's share up together until the
target is met; tilt 0 is its default uniform prune), and all are timed together in alternating rounds.

Accuracy straight after pruning is a proxy: it orders starting points, and only a fine-tune
against its control says what an allocation costs.

    .venv/bin/python benchmarks/prune_allocation_probe.py [--target-macs 250e6] [--splits even ...] [--tilts 0 0.5]

Writes benchmarks/results/<--name>.{json,md} (prune-allocation-probe by default).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from _repo import ROOT, repo_path, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text  # noqa: E402
from edgekit.bench import environment  # noqa: E402
from edgekit.config import PruneConfig, data_config_from_dict  # noqa: E402
from edgekit.data import load_data  # noqa: E402
from edgekit.measure import accuracy, compare_latency, recalibrate_bn  # noqa: E402
from edgekit.model import ModelSpec, build_model, count_macs, load_checkpoint  # noqa: E402
from edgekit.prune import prune_model, rebuild, spec_of, tilt_multipliers  # noqa: E402
from edgekit.report import RichReporter, markdown_table  # noqa: E402

STAGES = 4
BLOCKS_PER_STAGE = 2
# (residual multiplier, inner multiplier): how the base ratio reaches each kind of width.
SPLITS = {"even": (1.0, 1.0), "inner x0.5": (1.0, 0.5), "residual x0.5": (0.5, 1.0), "inner only": (0.0, 1.0)}
TILTS = (-0.5, 0.0, 0.5)


def ideal_widths(base: ModelSpec, ratio: float, split: tuple[float, float], tilt: float) -> list[float]:
    """Unrounded widths of the eight width groups: four residual, then four inner (a stage's two blocks)."""
    residual, inner = split
    tilts = tilt_multipliers(STAGES, tilt)
    inner_base = base.block_channels[::BLOCKS_PER_STAGE]
    return ([c * (1.0 - min(ratio * residual * t, 0.95)) for c, t in zip(base.stage_channels, tilts)]
            + [c * (1.0 - min(ratio * inner * t, 0.95)) for c, t in zip(inner_base, tilts)])


def spec_of_groups(base: ModelSpec, widths: list[int]) -> ModelSpec:
    return dataclasses.replace(base, stage_channels=tuple(widths[:STAGES]),
                               block_channels=tuple(w for w in widths[STAGES:] for _ in range(BLOCKS_PER_STAGE)))


def rounded(widths: list[float], round_to: int) -> list[int]:
    return [max(round_to, round_to * int(w // round_to)) for w in widths]


def spec_macs(spec: ModelSpec) -> int:
    with torch.device("meta"):  # shapes only: no weights allocated
        model = build_model(spec)
    return count_macs(model)


def fit_allocation(base: ModelSpec, split: tuple[float, float], tilt: float, target: int,
                   round_to: int) -> ModelSpec | None:
    """Widths as near the allocation as `target` MACs allow: the smallest base ratio (bisection) whose
    widths, rounded down to `round_to`, fit; then, since rounding every group down at once can land far
    below the target, groups are grown back by `round_to` (the one furthest below its share first) while
    the network still fits. None where no ratio fits (every share capped at 0.95 and still too many MACs:
    an allocation that leaves some widths whole)."""
    low, high = 0.0, 1.0 / max(m * s for m in tilt_multipliers(STAGES, tilt) for s in split if s > 0)
    for _ in range(30):
        middle = (low + high) / 2
        if spec_macs(spec_of_groups(base, rounded(ideal_widths(base, middle, split, tilt), round_to))) > target:
            low = middle
        else:
            high = middle
    ideal = ideal_widths(base, high, split, tilt)
    widths = rounded(ideal, round_to)
    if spec_macs(spec_of_groups(base, widths)) > target:
        return None
    full = [*base.stage_channels, *base.block_channels[::BLOCKS_PER_STAGE]]
    while True:
        for group in sorted(range(len(widths)), key=lambda g: widths[g] / ideal[g]):
            grown = widths[:group] + [widths[group] + round_to] + widths[group + 1:]
            if grown[group] <= full[group] and spec_macs(spec_of_groups(base, grown)) <= target:
                widths = grown
                break
        else:
            return spec_of_groups(base, widths)


def prune_to_spec(model, spec: ModelSpec):
    """Prune `model` to `spec`'s widths with Torch-Pruning, keeping the channels of largest L1 weight
    (group-wise, so coupled residual channels are ranked over every layer that shares them). Not under
    no_grad: Torch-Pruning traces the network's graph through autograd."""
    import torch_pruning as tp

    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, torch.rand(1, *spec.input_shape))
    importance = tp.importance.MagnitudeImportance(p=1)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    roots = [(model.conv1, spec.stage_channels[0])]
    roots += [(stages[s][0].conv2, spec.stage_channels[s]) for s in range(1, STAGES)]
    roots += [(block.conv1, spec.block_channels[i]) for i, block in enumerate(b for stage in stages for b in stage)]
    for conv, keep in roots:
        drop_count = conv.out_channels - keep
        if drop_count <= 0:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        drop = torch.argsort(importance(group))[:drop_count].tolist()
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop)
        if not graph.check_pruning_group(group):
            raise RuntimeError(f"Torch-Pruning refused to prune {drop_count} channels of {conv}")
        group.prune()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks/models/resnet18-w1-cpu.fp16.pt")
    parser.add_argument("--target-macs", type=float, default=250e6)
    parser.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    parser.add_argument("--tilts", nargs="+", type=float, default=list(TILTS))
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="prune-allocation-probe")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    reporter = RichReporter()
    started, env = time.perf_counter(), environment(threads=1)
    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.spec.arch != "resnet18":
        raise SystemExit(f"{args.checkpoint}: a {checkpoint.spec.arch} checkpoint; this probe splits ResNet18's widths")
    data = load_data(data_config_from_dict(checkpoint.extra.get("data_config")), reporter)
    config = PruneConfig(target_macs=int(args.target_macs), finetune_epochs=0)
    parent = checkpoint.build().eval()
    target = int(args.target_macs)

    candidates, unreachable = {}, []
    for tilt in args.tilts:
        model, _ = prune_model(copy.deepcopy(parent), data, dataclasses.replace(config, depth_tilt=tilt))
        candidates[f"edgekit prune --depth-tilt {tilt:g}"] = (model, {"split": "edgekit prune", "tilt": tilt})
    for tilt in args.tilts:
        for split_name in args.splits:
            split = SPLITS[split_name]
            spec = fit_allocation(checkpoint.spec, split, tilt, target, config.round_to)
            if spec is None:
                reporter.info(f"prune-allocation-probe: {split_name}, tilt {tilt:+.1f} cannot reach "
                              f"{target / 1e6:.0f} M MACs: skipped")
                unreachable.append({"split": split_name, "tilt": tilt})
                continue
            reporter.info(f"prune-allocation-probe: {split_name}, tilt {tilt:+.1f}: stages {spec.stage_channels}, "
                          f"blocks {spec.block_channels}")
            pruned, _ = rebuild(prune_to_spec(copy.deepcopy(parent), spec), checkpoint.spec)
            if spec_of(pruned, checkpoint.spec) != spec:
                raise RuntimeError(f"pruned widths {spec_of(pruned, checkpoint.spec)} are not the allocation's {spec}")
            recalibrate_bn(pruned, data, config.bn_batches, config.batch_size, config.seed)
            candidates[f"{split_name}, tilt {tilt:+.1f}"] = (pruned, {"split": split_name, "tilt": tilt})

    rows = []
    for name, (model, allocation) in candidates.items():
        spec = spec_of(model, checkpoint.spec)
        rows.append({"allocation": name, **allocation, "stage_channels": list(spec.stage_channels),
                     "block_channels": list(spec.block_channels), "macs": count_macs(model),
                     "val_accuracy": accuracy(model, data), "test_accuracy": accuracy(model, data, "test")})
        reporter.info(f"prune-allocation-probe: {name}: {rows[-1]['macs'] / 1e6:.0f} M MACs, "
                      f"val {rows[-1]['val_accuracy']:.2%}")
    reporter.info("prune-allocation-probe: timing every candidate with the parent, alternating rounds ...")
    latency = compare_latency({"parent": parent, **{name: m for name, (m, _) in candidates.items()}},
                              threads=1, runs=args.latency_runs)
    for row in rows:
        row["latency_ms"] = latency[row["allocation"]]["p50_ms"]
        row["speedup"] = latency["parent"]["p50_ms"] / row["latency_ms"]

    result = {"checkpoint": repo_path(args.checkpoint), "target_macs": target, "fine_tune_epochs": 0,
              "parent": {"macs": count_macs(parent), "val_accuracy": accuracy(parent, data),
                         "test_accuracy": accuracy(parent, data, "test"), "latency_ms": latency["parent"]["p50_ms"]},
              "splits": {k: list(SPLITS[k]) for k in args.splits}, "tilts": args.tilts,
              "unreachable": unreachable,
              "command": script_command(), "environment": env, "load_average_after": list(os.getloadavg()),
              "wall_seconds": round(time.perf_counter() - started, 1), "note": args.note, "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / f"{args.name}.json", json.dumps(result, indent=2) + "\n")

    ranked = sorted(rows, key=lambda r: r["val_accuracy"], reverse=True)
    table = markdown_table(
        ["allocation (residual, inner; tilt)", "stage widths", "inner widths", "MACs", "val before fine-tune", "test",
         "p50 ms", "speed-up"],
        [[r["allocation"], " ".join(map(str, r["stage_channels"])), " ".join(map(str, r["block_channels"])),
          f"{r['macs'] / 1e6:.0f} M", f"{r['val_accuracy']:.2%}", f"{r['test_accuracy']:.2%}",
          f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}x"] for r in ranked])
    parent_row = result["parent"]
    skipped = ", ".join(f"{u['split']}, tilt {u['tilt']:+.1f}" for u in unreachable)
    text = "\n".join([
        f"# {args.name}: one MAC budget spread over the layers in different ways, before any fine-tune", "",
        f"`{result['command']}`", "",
        f"From `{result['checkpoint']}` ({parent_row['macs'] / 1e6:.0f} M MACs, val {parent_row['val_accuracy']:.2%}, "
        f"test {parent_row['test_accuracy']:.2%}, p50 {parent_row['latency_ms']:.2f} ms), each allocation pruned to at "
        f"most {target / 1e6:.0f} M MACs, channels ranked by L1 within each layer (residual channels over every "
        "layer that shares them), widths multiples of 8, BN statistics recalibrated, no fine-tune. Splits "
        "multiply a base ratio for the residual and the inner widths (even = 1, 1; inner x0.5 = 1, 0.5; residual "
        "x0.5 = 0.5, 1; inner only = 0, 1); the tilt multiplies it by 1 + tilt * (stage - 1.5) / 1.5 over the "
        "four stages. Rows are ranked by validation accuracy, where a choice is made; accuracy here orders "
        "starting points, and only a fine-tune against its control says what one costs.", "",
        f"Machine: {env['cpu']}, {env['cores']} cores ({' '.join(env['cpu_flags'])}); torch eager, batch 1, "
        f"1 thread, every model timed in the same alternating rounds ({args.latency_runs} calls each); load average "
        f"before {env['load_average_start']}, after {result['load_average_after']}; wall time "
        f"{result['wall_seconds']:.0f} s. Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
        *([args.note] if args.note else []), "",
        table, "",
        *([f"Cannot reach the target (shares capped at 0.95, the rest whole), so not in the table: {skipped}.", ""]
          if unreachable else []),
        f"Highest validation accuracy straight after pruning: {ranked[0]['allocation']} "
        f"({ranked[0]['val_accuracy']:.2%} at {ranked[0]['macs'] / 1e6:.0f} M MACs, {ranked[0]['speedup']:.2f}x).", ""])
    atomic_write_text(args.results / f"{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
