"""Compression benchmark: prune (+ fine-tune), static PTQ, QAT, pruned + int8, measured on this CPU.

    .venv/bin/python benchmarks/compress.py --checkpoint benchmarks/models/resnet18-w0.5-cpu.fp16.pt

Writes benchmarks/results/compress-cpu.json and .md: accuracy (val and test), params, MACs,
file size and torch-eager CPU batch-1 latency (threads pinned) of every artifact, with the
machine and library versions. Every artifact also has its own manifest under --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.artifacts import atomic_write_text, library_versions, machine_info, sha256_file  # noqa: E402
from edgekit.config import (CalibMethod, PruneConfig, QuantizeConfig, QuantMode,  # noqa: E402
                            data_config_from_dict)
from edgekit.data import load_data  # noqa: E402
from edgekit.model import load_checkpoint  # noqa: E402
from edgekit.measure import accuracy, measure_latency  # noqa: E402
from edgekit.prune import model_stats, prune_checkpoint  # noqa: E402
from edgekit.quantize import quantize_checkpoint  # noqa: E402
from edgekit.report import RichReporter, markdown_table  # noqa: E402


def targets_table(rows: list[dict]) -> str:
    by_name = {r["artifact"].split(" (")[0].split(",")[0]: r for r in rows}
    fp32 = rows[0]

    def drop(row: dict) -> float:
        return 100 * (fp32["test_accuracy"] - row["test_accuracy"])

    checks = []
    for name, row, limit in (("static PTQ drop", by_name.get("static PTQ int8"), 0.5),
                             ("QAT drop", next((r for r in rows if r["artifact"].startswith("QAT")), None), 0.2)):
        if row:
            checks.append([name, f"{drop(row):+.2f} pt", f"<= {limit} pt", "met" if drop(row) <= limit else "missed"])
    for pruned in (r for r in rows if r["artifact"].startswith("pruned ") and not r["artifact"].startswith("pruned + ")):
        name = pruned["artifact"]
        checks.append([f"{name}: drop", f"{drop(pruned):+.2f} pt", "<= 0.5 pt", "met" if drop(pruned) <= 0.5 else "missed"])
        checks.append([f"{name}: MACs reduction", f"{pruned['macs_reduction']:.2f}x", ">= 2x",
                       "met" if pruned["macs_reduction"] >= 2 else "missed"])
        checks.append([f"{name}: fp32 speed-up (torch eager, batch 1)", f"{pruned['latency_speedup_same_run']:.2f}x",
                       ">= 1.7x", "met" if pruned["latency_speedup_same_run"] >= 1.7 else "missed"])
    ptq = by_name.get("static PTQ int8")
    if ptq:
        checks.append(["int8 file", f"{ptq['file_bytes'] / 1e6:.2f} MB", "<= 11.3 MB",
                       "met" if ptq["file_bytes"] <= 11.3e6 else "missed"])
    for row in rows:
        if row["artifact"].startswith("pruned + "):
            ok = drop(row) <= 1.0 and row["file_bytes"] <= 5e6
            checks.append([row["artifact"], f"{drop(row):+.2f} pt, {row['file_bytes'] / 1e6:.2f} MB",
                           "<= 1 pt, <= 5 MB", "met" if ok else "missed"])
    return markdown_table(["target", "measured", "limit", ""], checks)


def write_results(result: dict, results: Path, reporter) -> None:
    rows = result["rows"]
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "compress-cpu.json", json.dumps(result, indent=2) + "\n")
    reference = rows[0]["test_accuracy"]
    columns = ["artifact", "val acc", "test acc", "drop vs fp32 (pt)", "params", "MACs", "file MB",
               f"p50 ms ({result['threads']} thread)"]
    table = [[r["artifact"], f"{r['val_accuracy']:.2%}", f"{r['test_accuracy']:.2%}",
              f"{100 * (reference - r['test_accuracy']):+.2f}", r["params"], r["macs"],
              round(r["file_bytes"] / 1e6, 2), round(r["latency_p50_ms"], 3)] for r in rows]
    md = (f"# Compression on CPU\n\nReference: `{result['checkpoint']}`. {result['note']}\n\n"
          f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} cores; torch "
          f"{result['versions'].get('torch')}, torch-pruning {result['versions'].get('torch-pruning')}; "
          f"load average at the end {result['load_average_end']}.\n"
          f"Latency: {result['latency']}.\n\n" + markdown_table(columns, table)
          + "\n\n## Against the compression issue's targets (test accuracy)\n\n" + targets_table(rows) + "\n")
    atomic_write_text(results / "compress-cpu.md", md)
    reporter.info(md)


def remeasure(result: dict, extra: list[str], runs: int, rounds: int = 5) -> dict:
    """Add finished artifacts as rows (label=path), then re-time every row in one quiet process,
    in alternating rounds (edgekit.measure.compare_latency), replacing the in-training timings."""
    from edgekit.artifacts import read_manifest
    from edgekit.formats import FORMATS
    from edgekit.measure import compare_latency

    rows = result["rows"]
    for item in extra:
        label, _, path_text = item.partition("=")
        path = Path(path_text)
        metrics = read_manifest(path)["metrics"]
        macs = metrics.get("macs_after") or metrics.get("macs")
        manifest = read_manifest(path)
        params = metrics.get("params_after") or read_manifest(ROOT / manifest["parent"]["path"])["metrics"].get(
            "params_after")
        row = {"artifact": label, "file": str(path), "val_accuracy": metrics["val_accuracy"],
               "test_accuracy": metrics["test_accuracy"], "params": params, "macs": macs,
               "file_bytes": path.stat().st_size}
        if "macs_before" in metrics:
            row["macs_reduction"] = metrics["macs_before"] / metrics["macs_after"]
        rows = [r for r in rows if r["artifact"] != label] + [row]
    models = {r["artifact"]: FORMATS["torch"].module().load_runner(ROOT / r["file"]).model for r in rows}
    timed = compare_latency(models, result["threads"], runs, rounds=rounds)
    for row in rows:
        row["latency_p50_ms"] = timed[row["artifact"]]["p50_ms"]
        if "macs_reduction" in row:
            row["latency_speedup_same_run"] = rows[0]["latency_p50_ms"] / row["latency_p50_ms"]
    result.update(rows=rows, load_average_end=[round(x, 2) for x in os.getloadavg()],
                  latency=f"torch eager CPU, batch 1, threads pinned to {result['threads']}; every row re-timed in "
                          f"one process after all training, {rounds} alternating rounds of {max(10, runs // rounds)} "
                          "runs, p50 = median of the rounds' p50s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks/models/resnet18-w0.5-cpu.fp16.pt")
    parser.add_argument("--calibration", type=Path, default=ROOT / "calibration/cifar10-jpg-512.json")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "artifacts/compress")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--target-macs", type=float, default=None, help="instead of --ratio: prune until MACs <= this")
    parser.add_argument("--distill", type=float, default=PruneConfig.distill_alpha,
                        help="share of the fine-tune loss distilled from the unpruned model")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="per step")
    parser.add_argument("--finetune-lr", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=1, help="prune -> fine-tune rounds")
    parser.add_argument("--cpu-bf16", action="store_true", help="fine-tune in bf16 on a CPU with native bf16")
    parser.add_argument("--pruned-qat", action="store_true", help="also QAT the pruned model")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--note", default="")
    parser.add_argument("--remeasure", action="store_true",
                        help="no training: re-time the rows of the existing compress-cpu.json (plus --add rows)")
    parser.add_argument("--add", action="append", default=[], help="with --remeasure: label=path of a finished artifact")
    args = parser.parse_args()
    if args.remeasure:
        previous = json.loads((args.results / "compress-cpu.json").read_text())
        if args.note:
            previous["note"] = args.note
        write_results(remeasure(previous, args.add, args.latency_runs), args.results, RichReporter())
        return

    # --threads pins the latency measurements only; training and evaluation use every core
    reporter = RichReporter()
    start = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)
    data = load_data(data_config_from_dict(checkpoint.extra.get("data_config")), reporter)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def row(name: str, path: Path, model, val: float, test: float, latency_ms: float, stats: dict, **more) -> None:
        rows.append({"artifact": name, "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                     "val_accuracy": val, "test_accuracy": test, "params": stats.get("params"),
                     "macs": stats.get("macs"), "file_bytes": path.stat().st_size, "latency_p50_ms": latency_ms,
                     **more})

    fp32 = checkpoint.build()
    base_stats = model_stats(fp32)
    fp32_macs = base_stats["macs"]
    base_latency = measure_latency(fp32, args.threads, args.latency_runs)["p50_ms"]
    row("fp32 (reference)", args.checkpoint, fp32, accuracy(fp32, data), accuracy(fp32, data, "test"),
        base_latency, base_stats)

    pruned_path = out / "pruned.pt"
    target = int(args.target_macs) if args.target_macs else None
    pruned = prune_checkpoint(args.checkpoint, PruneConfig(ratio=None if target else args.ratio, target_macs=target,
                                                           finetune_epochs=args.finetune_epochs,
                                                           finetune_lr=args.finetune_lr, steps=args.steps,
                                                           distill_alpha=args.distill, cpu_bf16=args.cpu_bf16,
                                                           threads=args.threads, latency_runs=args.latency_runs),
                              pruned_path, reporter, data=data)
    how = f"to a {fp32_macs / target:.2f}x MACs target" if target else f"{args.ratio:.0%}/layer"
    distilled = f", distilled ({args.distill:g})" if args.distill else ""
    row(f"pruned {how}, {args.steps} step(s) x {args.finetune_epochs} ep fine-tune{distilled}", pruned_path, None,
        pruned.after["val_accuracy"], pruned.after["test_accuracy"], pruned.after["latency"]["p50_ms"], pruned.after,
        macs_reduction=pruned.before["macs"] / pruned.after["macs"],
        latency_speedup_same_run=pruned.before["latency"]["p50_ms"] / pruned.after["latency"]["p50_ms"],
        latency_before_same_run_ms=pruned.before["latency"]["p50_ms"])

    def quant(name: str, source: Path, target: Path, config: QuantizeConfig) -> None:
        result = quantize_checkpoint(source, config, target, reporter, data=data)
        m = result.metrics
        stats = model_stats(load_checkpoint(source).build())
        extra = {"method": json.loads(Path(str(target) + ".manifest.json").read_text())["extra"]["recipe"].get("method"),
                 "qint8_tensors": m["census"]["qint8_tensors"],
                 "fp32_parent_val_accuracy": m["fp32_val_accuracy"], "fp32_parent_test_accuracy": m["fp32_test_accuracy"],
                 "parent_latency_same_run_ms": m["fp32_latency_ms"]}
        for key in ("ptq_val_accuracy", "ptq_test_accuracy", "qat_fake_quant_val_accuracy",
                    "qat_fake_quant_test_accuracy"):
            if key in m:
                extra[key] = m[key]
        row(name, target, None, m["val_accuracy"], m["test_accuracy"], m["latency_ms"], stats, **extra)

    common = dict(calibration=str(args.calibration), threads=args.threads, latency_runs=args.latency_runs)
    quant("dynamic int8 (fc only)", args.checkpoint, out / "dynamic.pt", QuantizeConfig(mode=QuantMode.dynamic,
                                                                                    threads=args.threads,
                                                                                    latency_runs=args.latency_runs))
    quant("static PTQ int8 (auto)", args.checkpoint, out / "ptq.pt", QuantizeConfig(mode=QuantMode.static, **common))
    quant(f"QAT int8 ({args.qat_epochs} ep)", args.checkpoint, out / "qat.pt",
          QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.auto, qat_epochs=args.qat_epochs, **common))
    quant("pruned + static PTQ int8", pruned_path, out / "pruned-ptq.pt",
          QuantizeConfig(mode=QuantMode.static, **common))
    if args.pruned_qat:
        quant(f"pruned + QAT int8 ({args.qat_epochs} ep)", pruned_path, out / "pruned-qat.pt",
              QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.auto, qat_epochs=args.qat_epochs, **common))

    shown = args.checkpoint.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    result = {"checkpoint": str(shown), "checkpoint_sha256": sha256_file(args.checkpoint),
              "calibration": str(args.calibration), "data": data.describe(), "machine": machine_info(),
              "versions": library_versions(), "threads": args.threads, "latency": "torch eager CPU, batch 1, p50 of "
              f"{args.latency_runs} runs, threads pinned to {args.threads}",
              "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "note": args.note, "wall_seconds": time.perf_counter() - start, "rows": rows}
    write_results(result, args.results, reporter)


if __name__ == "__main__":
    main()
