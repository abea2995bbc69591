"""Compression benchmark: prune (+ fine-tune), dynamic and static PTQ, QAT, pruned + int8, each
fine-tuned child beside its control, measured on this CPU.

    .venv/bin/python benchmarks/compress.py --checkpoint benchmarks/models/resnet18-w1-cpu.fp16.pt \
        --target-macs 270e6 --finetune-epochs 3 --cpu-bf16 --qat-epochs 1 --out-dir artifacts/w1

Every step writes an ordinary edgekit artifact (the same file `edgekit prune`, `quantize` and
`control` write) under --out-dir. A step whose artifact is already there, made from the same source
file with the same configuration (its manifest says so), is kept instead of re-run, so a long run cut
off part-way resumes where it stopped, and the steps can be run one by one with the CLI first; a
fine-tune cut off inside a step (pruning's, a control's, QAT's) goes on from its last finished epoch,
kept in OUT_DIR/KEY.pt.finetune/ (edgekit.scratch).
Anything else already there with a different recipe is refused, not overwritten.

After every step has its artifact, all rows are read from their manifests and timed together in
one process, in alternating rounds (torch eager, batch 1, threads pinned), so no row's latency was
measured under a training job's load. Each child's gap to its control comes with the standard error
of that paired difference and McNemar's p, from both files' answers on every image, so a gap
next to a limit shows whether the split can tell it apart. Writes benchmarks/results/<--name>.json and .md (compress-cpu
by default).

Controls: a child that was fine-tuned (pruning, QAT) is read against its parent put through the
same fine-tune (`edgekit control`), so what extra training alone gains is not credited to
compression. Children without a fine-tune (PTQ, dynamic) are read against the parent itself.
A control depends only on the parent and the fine-tune, not on what was pruned: to try another
--target-macs with the same fine-tune in a new --out-dir, link the earlier pruned.control.pt into
it (`ln OLD/pruned.control.pt NEW/`) and it is kept instead of trained again
(edgekit.finetune.control_mismatch says why one does not fit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _repo import ROOT, repo_path, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import (atomic_write_text, library_versions, machine_info, read_manifest,  # noqa: E402
                               sha256_file, to_plain)
from edgekit.config import (CalibMethod, Importance, PruneConfig, QuantizeConfig, QuantMode, WeightScheme,  # noqa: E402
                            changed_fields, data_config_from_dict)
from edgekit.data import load_data, to_unit_float  # noqa: E402
from edgekit.finetune import control_checkpoint, control_mismatch, default_output, plan_of  # noqa: E402
from edgekit.flips import paired_difference  # noqa: E402
from edgekit.formats import FORMATS, predict_all  # noqa: E402
from edgekit.measure import EVAL_BATCH, accuracy, compare_latency  # noqa: E402
from edgekit.model import load_checkpoint  # noqa: E402
from edgekit.prune import model_stats, prune_checkpoint  # noqa: E402
from edgekit.quantize import quantize_checkpoint  # noqa: E402
from edgekit.report import RichReporter, markdown_table  # noqa: E402

# Settings that change how a step is measured or logged, not the weights it writes.
NOT_RECIPE = frozenset({"threads", "latency_runs", "tensorboard", "export_onnx", "sensitivity"})


@dataclass
class Step:
    key: str  # the artifact is OUT_DIR/KEY.pt
    label: str
    source: str  # "reference" or another step's key
    control: str | None  # the row this one is judged against ("reference" when nothing was fine-tuned)
    section: str  # the manifest's config section
    config: Any
    run: Callable[..., None]  # (source file, output file[, control's bf16])
    control_bf16: bool | None = None  # a control's arithmetic, when not its child's


def kept(step: Step, source: Path, out: Path) -> bool:
    """True when `out` is this step's finished artifact; False when there is none; ConfigError-like
    SystemExit when something else is in the way."""
    if not out.exists():
        return False
    if step.section == "finetune":  # a control: made for this child or another one fine-tuned alike
        why = control_mismatch(out, source, step.config)
        if why is None:
            return True
        sys.exit(f"error: {out} is already there but is not this step's artifact ({why}); remove it or pass "
                 "another --out-dir")
    manifest = read_manifest(out)
    parent = (manifest.get("parent") or {}).get("sha256")
    # A setting added after the file was made (e.g. `weights`) reads as its default: how the file was made.
    differs = sorted(changed_fields((manifest.get("config") or {}).get(step.section) or {}, to_plain(step.config),
                                    to_plain(type(step.config)()), NOT_RECIPE))
    if parent == sha256_file(source) and not differs:
        return True
    why = f"recipe differs in {', '.join(differs)}" if differs else f"made from another file than {source}"
    sys.exit(f"error: {out} is already there but is not this step's artifact ({why}); remove it or pass "
             "another --out-dir")


def plan(args: argparse.Namespace, data: Any, reporter: RichReporter) -> list[Step]:
    target = int(args.target_macs) if args.target_macs else None
    prune_config = PruneConfig(ratio=None if target else args.ratio, target_macs=target,
                               finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr, steps=args.steps,
                               distill_alpha=args.distill, cpu_bf16=args.cpu_bf16, importance=Importance(args.importance),
                               global_pruning=args.global_pruning, depth_tilt=args.depth_tilt)
    cal = repo_path(args.calibration)
    static = QuantizeConfig(mode=QuantMode.static, calibration=cal)
    dynamic = QuantizeConfig(mode=QuantMode.dynamic)
    qat = QuantizeConfig(mode=QuantMode.qat, method=CalibMethod.auto, qat_epochs=args.qat_epochs, calibration=cal)

    def pruning(source: Path, out: Path) -> None:
        prune_checkpoint(source, prune_config, out, reporter, data=data)

    def quantizing(config: QuantizeConfig) -> Callable[[Path, Path], None]:
        return lambda source, out: quantize_checkpoint(source, config, out, reporter, data=data)

    def controlling(child: Path, out: Path, bf16: bool | None) -> None:
        control_checkpoint(child, out, cpu_bf16=bf16, reporter=reporter, data=data)

    how = f"to {args.target_macs:.3g} MACs" if target else f"{args.ratio:.0%}/layer"
    tune = f"{args.steps} x {args.finetune_epochs} ep{f', distill {args.distill:g}' if args.distill else ''}"
    steps = [Step("pruned", f"pruned {how}, {tune}", "reference", "pruned.control", "prune", prune_config, pruning),
             Step("pruned.control", f"control: fp32 fine-tuned as pruned ({tune})", "pruned", None, "finetune",
                  None, controlling),
             Step("dynamic", "dynamic int8 (fc only)", "reference", "reference", "quantize", dynamic,
                  quantizing(dynamic)),
             Step("ptq", "static PTQ int8", "reference", "reference", "quantize", static, quantizing(static))]
    if args.per_tensor_ptq:
        per_tensor = dataclasses.replace(static, weights=WeightScheme.per_tensor)
        steps.append(Step("ptq-per-tensor", "static PTQ int8, per-tensor weights", "reference", "reference",
                          "quantize", per_tensor, quantizing(per_tensor)))
    steps.append(Step("pruned-ptq", "pruned + static PTQ int8", "pruned", "pruned.control", "quantize", static,
                      quantizing(static)))
    if args.qat_epochs:
        bf16 = True if args.qat_control_bf16 else None
        steps += [Step("qat", f"QAT int8 ({args.qat_epochs} ep)", "reference", "qat.control", "quantize", qat,
                       quantizing(qat)),
                  Step("qat.control", f"control: fp32 fine-tuned as QAT ({args.qat_epochs} ep"
                       f"{', bf16' if bf16 else ''})", "qat", None, "finetune", None, controlling, bf16)]
    return steps


def run_steps(steps: list[Step], reference: Path, out_dir: Path, reporter: RichReporter) -> dict[str, Path]:
    files = {"reference": reference}
    for step in steps:
        source, out = files[step.source], out_dir / f"{step.key}.pt"
        if step.section == "finetune":
            assert out == default_output(source), (out, source)
            step.config = plan_of(source, read_manifest(source))
            if step.control_bf16 is not None:
                step.config = dataclasses.replace(step.config, cpu_bf16=step.control_bf16)
        if kept(step, source, out):
            reporter.info(f"compress: {step.label}: kept {out} (same source, same recipe)")
        else:
            started = time.perf_counter()
            reporter.info(f"compress: {step.label}: from {source.name} ...")
            if step.section == "finetune":
                step.run(source, out, step.control_bf16)
            else:
                step.run(source, out)
            reporter.info(f"compress: {step.label}: done in {time.perf_counter() - started:.0f} s")
        files[step.key] = out
    return files


def row_of(label: str, path: Path, source_model_path: Path) -> dict[str, Any]:
    manifest = read_manifest(path)
    metrics = manifest.get("metrics") or {}
    stats = model_stats(load_checkpoint(source_model_path).build())
    return {"artifact": label, "file": repo_path(path),
            "kind": manifest.get("kind"), "precision": manifest.get("precision"),
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "params": stats["params"], "macs": stats["macs"], "file_bytes": path.stat().st_size,
            "method": ((manifest.get("extra") or {}).get("recipe") or {}).get("method"),
            "qint8_tensors": (metrics.get("census") or {}).get("qint8_tensors")}


def collect(steps: list[Step], files: dict[str, Path], reference: Path, data: Any, threads: int, runs: int,
            rounds: int) -> list[dict[str, Any]]:
    """One row per artifact from its manifest; all of them timed together, in alternating rounds, and
    scored again image by image, for the paired difference of each child to its control."""
    checkpoint = load_checkpoint(reference)
    fp32 = checkpoint.build()
    rows = [{"artifact": "fp32 (reference)", "key": "reference", "control": None,
             "file": repo_path(reference),
             "kind": "checkpoint", "precision": "fp32 (stored fp16)",
             "val_accuracy": accuracy(fp32, data), "test_accuracy": accuracy(fp32, data, "test"), **model_stats(fp32),
             "file_bytes": reference.stat().st_size}]
    for step in steps:
        # An int8 file's params and MACs are its float source's; a control is the reference's shape.
        shape_of = files[step.source] if step.section == "quantize" else files[step.key]
        if step.section == "finetune":
            shape_of = reference
        rows.append({**row_of(step.label, files[step.key], shape_of), "key": step.key, "control": step.control})
    runners = {r["key"]: FORMATS["torch"].module().load_runner(ROOT / r["file"]) for r in rows}
    timed = compare_latency({key: runner.model for key, runner in runners.items()}, threads, runs, rounds=rounds)
    correct = right_answers(runners, data)
    by_key = {r["key"]: r for r in rows}
    for row in rows:
        row["latency_p50_ms"] = timed[row["key"]]["p50_ms"]
        row["latency_p90_ms"] = timed[row["key"]]["p90_ms"]
        row["speedup_vs_fp32"] = rows[0]["latency_p50_ms"] / row["latency_p50_ms"]
        row["macs_reduction"] = rows[0]["macs"] / row["macs"]
        for split in ("val", "test"):
            row[f"vs_fp32_{split}_pt"] = 100 * (row[f"{split}_accuracy"] - rows[0][f"{split}_accuracy"])
            if row["control"]:
                control = by_key[row["control"]]
                row[f"vs_control_{split}_pt"] = 100 * (row[f"{split}_accuracy"] - control[f"{split}_accuracy"])
                row[f"paired_vs_control_{split}"] = paired_difference(correct[row["control"]][split],
                                                                      correct[row["key"]][split])
    return rows


def right_answers(runners: dict[str, Any], data: Any) -> dict[str, dict[str, np.ndarray]]:
    """Per row and split, which images the artifact gets right: the paired difference to its control
    (standard error, McNemar) needs both answers on each image, which the manifests do not keep."""
    splits = {split: (to_unit_float(getattr(data, f"{split}_x")).numpy(), getattr(data, f"{split}_y").numpy())
              for split in ("val", "test")}
    return {key: {split: predict_all(runner, images, EVAL_BATCH)[0].argmax(1) == labels
                  for split, (images, labels) in splits.items()}
            for key, runner in runners.items()}


def targets_table(rows: list[dict[str, Any]]) -> str:
    """The compression issue's targets, each read on test against the row's control."""
    by_key = {r["key"]: r for r in rows}
    checks = []

    def check(name: str, measured: str, limit: str, ok: bool) -> None:
        checks.append([name, measured, limit, "met" if ok else "missed"])

    def against(row: dict[str, Any]) -> str:
        return "fp32 parent" if row["control"] == "reference" else f"control ({row['control']}.pt)"

    def drop(row: dict[str, Any]) -> str:
        """The drop and how well the test split resolves it (absent from results made before it was kept)."""
        paired = row.get("paired_vs_control_test")
        resolution = (f" (SE {paired['standard_error_pt']:.2f}, McNemar p {paired['mcnemar_p']:.2g})"
                      if paired else "")
        return f"{-row['vs_control_test_pt']:+.2f} pt{resolution}"

    if "ptq-per-tensor" in by_key:
        coarse = by_key["ptq-per-tensor"]
        check("static PTQ, per-tensor weights: drop vs fp32 parent", drop(coarse),
              "<= 0.5 pt", -coarse["vs_control_test_pt"] <= 0.5)
    if "ptq" in by_key:
        ptq = by_key["ptq"]
        check("static PTQ: drop vs fp32 parent", drop(ptq), "<= 0.5 pt",
              -ptq["vs_control_test_pt"] <= 0.5)
        check("static PTQ int8 file", f"{ptq['file_bytes'] / 1e6:.2f} MB", "<= 11.3 MB", ptq["file_bytes"] <= 11.3e6)
    if "qat" in by_key:
        qat = by_key["qat"]
        check(f"QAT: drop vs {against(qat)}", drop(qat), "<= 0.2 pt",
              -qat["vs_control_test_pt"] <= 0.2)
    if "pruned" in by_key:
        pruned = by_key["pruned"]
        check(f"pruning: drop vs {against(pruned)}", drop(pruned), "<= 0.5 pt",
              -pruned["vs_control_test_pt"] <= 0.5)
        check("pruning: MACs reduction", f"{pruned['macs_reduction']:.2f}x", ">= 2x", pruned["macs_reduction"] >= 2)
        check("pruning: fp32 speed-up (torch eager, batch 1)", f"{pruned['speedup_vs_fp32']:.2f}x", ">= 1.7x",
              pruned["speedup_vs_fp32"] >= 1.7)
    if "pruned-ptq" in by_key:
        both = by_key["pruned-ptq"]
        check(f"pruned + int8: drop vs {against(both)}, file", f"{drop(both)}, {both['file_bytes'] / 1e6:.2f} MB",
              "<= 1 pt, <= 5 MB",
              -both["vs_control_test_pt"] <= 1 and both["file_bytes"] <= 5e6)
    return markdown_table(["target (test split)", "measured", "limit", ""], checks)


def write_results(result: dict[str, Any], results: Path, name: str, reporter: RichReporter) -> None:
    rows = result["rows"]
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / f"{name}.json", json.dumps(result, indent=2) + "\n")

    def pt(value: float | None) -> str:
        return "" if value is None else f"{value:+.2f}"

    columns = ["artifact", "val acc", "test acc", "vs fp32 (pt)", "vs control (pt)", "control", "params", "MACs",
               "file MB", f"p50 ms ({result['threads']} thread)", "speed-up"]
    table = [[r["artifact"], f"{r['val_accuracy']:.2%}", f"{r['test_accuracy']:.2%}", pt(r["vs_fp32_test_pt"]),
              pt(r.get("vs_control_test_pt")),
              {None: "", "reference": "fp32 parent"}.get(r["control"], f"`{r['control']}.pt`"),
              f"{r['params']:,}", f"{r['macs']:,}", round(r["file_bytes"] / 1e6, 2),
              round(r["latency_p50_ms"], 3), f"{r['speedup_vs_fp32']:.2f}x"] for r in rows]
    machine = result["machine"]
    md = (f"# Compression on CPU\n\nReference: `{result['checkpoint']}` (sha256 {result['checkpoint_sha256'][:12]}). "
          f"{result['note']}\n\nCommand: `{result['command']}`\n\n"
          f"Machine: {machine['processor']}, {machine['cpu_count']} cores; torch {result['versions'].get('torch')}, "
          f"torch-pruning {result['versions'].get('torch-pruning')}; load average when timing ended "
          f"{result['load_average_end']}.\nLatency: {result['latency']}.\n\n"
          f"Accuracy differences are on the test split ({result['test_images']:,} images); \"vs control\" reads a fine-tuned child "
          "against its parent fine-tuned the same way, a PTQ child against the parent itself. SE: the standard "
          "error of that paired difference, from both models' answers on each image (a gap within about two SE "
          "of a limit is not resolved by this split); McNemar p: how likely a split this lopsided would be if "
          "the two models were equally accurate.\n\n"
          + markdown_table(columns, table)
          + "\n\n## Against the compression issue's targets (test split, each against its control)\n\n"
          + targets_table(rows) + "\n")
    atomic_write_text(results / f"{name}.md", md)
    reporter.info(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks/models/resnet18-w1-cpu.fp16.pt")
    parser.add_argument("--calibration", type=Path, default=ROOT / "calibration/cifar10-jpg-512.json")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "artifacts/compress")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="compress-cpu", help="results file stem: RESULTS/NAME.{json,md}")
    parser.add_argument("--ratio", type=float, default=PruneConfig.ratio)
    parser.add_argument("--target-macs", type=float, default=None, help="instead of --ratio: prune until MACs <= this")
    parser.add_argument("--distill", type=float, default=PruneConfig.distill_alpha,
                        help="share of the fine-tune loss distilled from the unpruned model")
    parser.add_argument("--finetune-epochs", type=int, default=PruneConfig.finetune_epochs, help="per step")
    parser.add_argument("--finetune-lr", type=float, default=PruneConfig.finetune_lr)
    parser.add_argument("--steps", type=int, default=PruneConfig.steps, help="prune -> fine-tune rounds")
    parser.add_argument("--importance", choices=[i.value for i in Importance], default=PruneConfig.importance.value,
                        help="how channels are ranked (not part of the fine-tune: the control still fits)")
    parser.add_argument("--global-pruning", action="store_true",
                        help="rank channels across layers instead of the same share from each")
    parser.add_argument("--depth-tilt", type=float, default=PruneConfig.depth_tilt,
                        help="prune later stages harder (> 0) or earlier ones (< 0): part of the pruning, not of "
                             "the fine-tune, so the control still fits")
    parser.add_argument("--cpu-bf16", action="store_true", help="fine-tune the pruned model in bf16 (native bf16 CPU)")
    parser.add_argument("--per-tensor-ptq", action="store_true",
                        help="add a static PTQ row with one weight scale per tensor beside the per-channel one")
    parser.add_argument("--qat-epochs", type=int, default=1, help="0 = no QAT row")
    parser.add_argument("--qat-control-bf16", action="store_true",
                        help="train QAT's control in bf16 (QAT itself trains in fp32; recorded in the row)")
    parser.add_argument("--threads", type=int, default=1, help="pinned for the latency measurement only")
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    reporter = RichReporter()
    start = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)
    data = load_data(data_config_from_dict(checkpoint.extra.get("data_config")), reporter)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    steps = plan(args, data, reporter)
    files = run_steps(steps, args.checkpoint, args.out_dir, reporter)
    reporter.info(f"compress: timing {len(steps) + 1} models together, {args.rounds} alternating rounds ...")
    rows = collect(steps, files, args.checkpoint, data, args.threads, args.latency_runs, args.rounds)
    result = {"checkpoint": repo_path(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
              "command": script_command(),
              "calibration": repo_path(args.calibration), "data": data.describe(), "test_images": len(data.test_y), "machine": machine_info(),
              "versions": library_versions(), "threads": args.threads,
              "latency": f"torch eager CPU, batch 1, threads pinned to {args.threads}; every row timed in one process "
                         f"after all training, {args.rounds} alternating rounds of {max(10, args.latency_runs // args.rounds)}"
                         " runs (edgekit.measure.compare_latency)",
              "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "note": args.note, "wall_seconds": time.perf_counter() - start,
              "artifacts": {k: {"path": str(v), "sha256": sha256_file(v)} for k, v in files.items()}, "rows": rows}
    write_results(result, args.results, args.name, reporter)


if __name__ == "__main__":
    main()
