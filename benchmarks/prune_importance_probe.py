"""Which channel ranking to prune by? Each importance, uniform and global, before any fine-tune.

Every compress study prunes with the same share of channels from each layer, ranked by L1 weight
magnitude (PruneConfig's defaults). This probe checks that choice on the real reference before a
fine-tune is spent on another one: the reference pruned toward one MAC target by each ranking,
uniformly and globally (Torch-Pruning ranks channels across layers and lets widths differ), then
read with no fine-tune (BN statistics recalibrated, as `edgekit prune` does after each step).
Accuracy straight after pruning is only a proxy for what a fine-tune recovers, so this orders the
candidates; the compress study measures the winner. Latency is each file's own p50 (torch eager,
batch 1), measured one file after another, so read it to about 10 %.

    .venv/bin/python benchmarks/prune_importance_probe.py [--target-macs 215e6] [--importance l1 taylor]

Writes benchmarks/results/<--name>.{json,md} (prune-importance-probe by default).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _repo import ROOT, repo_path, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, read_manifest  # noqa: E402
from edgekit.bench import environment  # noqa: E402
from edgekit.config import Importance, PruneConfig, data_config_from_dict  # noqa: E402
from edgekit.data import load_data  # noqa: E402
from edgekit.model import load_checkpoint  # noqa: E402
from edgekit.prune import prune_checkpoint  # noqa: E402
from edgekit.report import RichReporter, markdown_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks/models/resnet18-w1-cpu.fp16.pt")
    parser.add_argument("--target-macs", type=float, default=215e6)
    parser.add_argument("--importance", nargs="+", choices=[i.value for i in Importance], default=["l1", "taylor"])
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="prune-importance-probe")
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    reporter = RichReporter()
    started, env = time.perf_counter(), environment(threads=1)
    checkpoint = load_checkpoint(args.checkpoint)
    data = load_data(data_config_from_dict(checkpoint.extra.get("data_config")), reporter)
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for importance in args.importance:
            for global_pruning in (False, True):
                config = PruneConfig(target_macs=int(args.target_macs), finetune_epochs=0,
                                     importance=Importance(importance), global_pruning=global_pruning,
                                     latency_runs=args.latency_runs)
                way = "global" if global_pruning else "uniform"
                reporter.info(f"prune-importance-probe: {importance} {way} toward {args.target_macs:.3g} MACs ...")
                out = Path(scratch) / f"{importance}-{way}.pt"
                prune_checkpoint(args.checkpoint, config, out, data=data)
                manifest = read_manifest(out)
                metrics, spec = manifest["metrics"], manifest["extra"]["spec"]
                records.append({"importance": importance, "pruning": way, "macs": metrics["macs_after"],
                                "macs_reduction": metrics["macs_reduction"], "params": metrics["params_after"],
                                "stage_channels": spec.get("stage_channels"), "block_channels": spec.get("block_channels"),
                                "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
                                "val_accuracy_before": metrics["val_accuracy_before"],
                                "latency_ms": metrics["latency_ms_after"], "speedup": metrics["speedup"]})

    result = {"checkpoint": repo_path(args.checkpoint),
              "target_macs": args.target_macs, "fine_tune_epochs": 0,
              "command": script_command(),
              "environment": env, "load_average_after": list(os.getloadavg()),
              "wall_seconds": round(time.perf_counter() - started, 1), "note": args.note, "rows": records}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    best = max(records, key=lambda r: r["val_accuracy"])
    table = markdown_table(
        ["importance", "pruning", "MACs", "fewer MACs", "params", "val before fine-tune", "test", "p50 ms", "speed-up"],
        [[r["importance"], r["pruning"], f"{r['macs'] / 1e6:.0f} M", f"{r['macs_reduction']:.2f}x",
          f"{r['params'] / 1e6:.2f} M", f"{r['val_accuracy']:.2%}", f"{r['test_accuracy']:.2%}",
          f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}x"] for r in records])
    widths = "\n".join(f"- {r['importance']} {r['pruning']}: stage {r['stage_channels']}, blocks {r['block_channels']}"
                       for r in records)
    text = "\n".join([
        f"# {args.name}: channel ranking before any fine-tune", "",
        f"`{result['command']}`", "",
        f"From `{result['checkpoint']}` (val {records[0]['val_accuracy_before']:.2%} unpruned), pruned toward "
        f"{args.target_macs / 1e6:.0f} M MACs (the pruner stops at the first step at or below it, so global "
        "pruning, whose steps are finer, lands nearer), BN statistics recalibrated, no fine-tune. "
        "Accuracy here orders the candidates; only a fine-tune against its control says what each costs.",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores ({' '.join(env['cpu_flags'])}); torch eager, batch 1, "
        f"1 thread, {args.latency_runs} timed calls per file, files timed one after another; load average "
        f"before {env['load_average_start']}, after {result['load_average_after']}; wall time "
        f"{result['wall_seconds']:.0f} s. Versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
        *([args.note] if args.note else []), "",
        table, "",
        f"Highest validation accuracy straight after pruning: {best['importance']} {best['pruning']} "
        f"({best['val_accuracy']:.2%} at {best['macs'] / 1e6:.0f} M MACs).", "",
        "Channel widths:", "", widths, ""])
    atomic_write_text(args.results / f"{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
