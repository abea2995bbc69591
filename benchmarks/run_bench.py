"""Bench any trained checkpoint end to end: derive the usual artifacts from it, then bench them all.

This is a one-command convenience for your own checkpoint. It does not reproduce the committed
benchmarks/results/bench-cpu.*: that run benched the artifacts of benchmarks/compress.py and
benchmarks/export_matrix.py with the `edgekit bench` command recorded in its manifest (the
README's "Reproduce them" block lists every step).

    .venv/bin/python benchmarks/run_bench.py artifacts/ref-cpu/best.pt --threads 2

Steps (a step whose output already exists is reused; a step that fails is reported and the
bench goes on with what exists, so the results say what could not be made):
  1. a 512-image calibration set for the checkpoint's own train split (artifacts dir);
  2. exports of the fp32 checkpoint: ONNX fp32 / fp16 / int8 (QDQ), TFLite fp32 / fp16 / int8;
  3. torch static int8 (`edgekit quantize`), which also writes its QDQ ONNX;
  4. a pruned + fine-tuned checkpoint (`edgekit prune`) and its ONNX int8 and TFLite int8;
  5. `edgekit bench` over all of them plus the stock baselines (--baselines).
"""

from __future__ import annotations

import argparse
import os
import traceback
from pathlib import Path

import torch

from _repo import ROOT  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import manifest_path  # noqa: E402
from edgekit.bench import bench  # noqa: E402
from edgekit.config import BenchConfig, ExportOptions, PruneConfig, QuantizeConfig, CalibMethod, data_config_from_dict  # noqa: E402
from edgekit.report import RichReporter  # noqa: E402


def step(name, out: Path, make, reporter, failures: list) -> Path | None:
    if out.exists() and manifest_path(out).exists():
        reporter.info(f"[{name}] reuse {out}")
        return out
    reporter.info(f"[{name}] -> {out}")
    try:
        make()
        return out
    except Exception as exc:  # record and go on: the bench notes what is missing
        failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        reporter.info(f"[{name}] FAILED: {failures[-1]}")
        traceback.print_exc()
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, nargs="?", default=Path("artifacts/ref-cpu/best.pt"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench-cpu"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench-cpu"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--skip-prune", action="store_true")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args()

    from edgekit.calibrate import make_calibration, save_calibration
    from edgekit.data import load_data
    from edgekit.export import export_artifact
    from edgekit.model import load_checkpoint

    reporter = RichReporter()
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    checkpoint = args.checkpoint
    data_config = data_config_from_dict(load_checkpoint(checkpoint).extra.get("data_config"))

    calibration = work / "calibration-512.json"
    if not calibration.exists():
        data = load_data(data_config, reporter)
        save_calibration(make_calibration(data, data_config, 512, seed=0,
                                          model_spec=load_checkpoint(checkpoint).spec), calibration)
    options = ExportOptions(calibration=str(calibration), dynamic_batch=True, threads=args.threads)

    made: list[Path] = [checkpoint]

    def export(source: Path, target: str, precision: str, name: str) -> None:
        out = work / name
        path = step(f"export {source.name} {target} {precision}", out,
                    lambda: export_artifact(source, target, precision, out, options, reporter), reporter, failures)
        if path:
            made.append(path)

    for target, precision, suffix in (("onnx", "fp32", "onnx"), ("onnx", "fp16", "onnx"), ("onnx", "int8", "onnx"),
                                      ("tflite", "fp32", "tflite"), ("tflite", "fp16", "tflite"),
                                      ("tflite", "int8", "tflite")):
        export(checkpoint, target, precision, f"fp32-{target}-{precision}.{suffix}")

    from edgekit.quantize import quantize_checkpoint

    int8 = work / "torch-int8-static.pt"
    qconfig = QuantizeConfig(calibration=str(calibration), method=CalibMethod.percentile, threads=args.threads,
                             export_onnx=False)
    if step("quantize static", int8, lambda: quantize_checkpoint(checkpoint, qconfig, int8, reporter), reporter, failures):
        made.append(int8)

    if not args.skip_prune:
        from edgekit.prune import prune_checkpoint

        pruned = work / "pruned.pt"
        pconfig = PruneConfig(ratio=args.prune_ratio, finetune_epochs=args.prune_epochs, threads=args.threads)
        if step("prune", pruned, lambda: prune_checkpoint(checkpoint, pconfig, pruned, reporter), reporter, failures):
            made.append(pruned)
            export(pruned, "onnx", "int8", "pruned-onnx-int8.onnx")
            export(pruned, "tflite", "int8", "pruned-tflite-int8.tflite")

    config = BenchConfig(threads=args.threads, test_limit=args.test_limit, runs=args.runs,
                         min_seconds=args.min_seconds, baselines=True, baseline_dir=str(work / "baselines"),
                         calibration=str(calibration))
    notes = [f"made by benchmarks/run_bench.py from {checkpoint}"] + [f"not made in this run: {f}" for f in failures]
    bench(made, config, reporter, out=args.out, notes=notes)
    reporter.info(f"done; {len(failures)} step(s) failed" + (": " + "; ".join(failures) if failures else ""))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
