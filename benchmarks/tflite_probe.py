"""Batch-1 CPU latency of the TFLite target at fp32 / fp16 / int8 for a width-1 ResNet18.

A probe, not the bench protocol (edgekit bench is): an untrained width-1 model (random weights
cost the same time as trained ones), int8 calibrated on the committed 128-image CIFAR-10 set,
2 interpreter threads, warm-up, then timed invoke() calls, the precisions interleaved in
blocks of 10 so the shared CPU's load spreads over all of them. Writes
benchmarks/results/tflite-probe.{json,md}.

    .venv/bin/python benchmarks/tflite_probe.py [--runs 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _repo import ROOT  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, library_versions, machine_info  # noqa: E402
from edgekit.calibrate import calibration_data_config, load_calibration  # noqa: E402
from edgekit.config import ExportOptions  # noqa: E402
from edgekit.data import load_data, to_unit_float  # noqa: E402
from edgekit.formats import tflite  # noqa: E402
from edgekit.timing import percentiles, time_calls, time_interleaved  # noqa: E402
from edgekit.model import ModelSpec, build_model, count_macs, save_checkpoint  # noqa: E402

CALIBRATION = ROOT / "calibration" / "cifar10-jpg-128.json"
RESULTS = ROOT / "benchmarks" / "results"


def invoke_timer(runner: tflite.TFLiteRunner, image: np.ndarray):
    """Interpreter time alone: set_tensor + invoke + get_tensor on a batch-1 input, already NHWC/quantized."""
    runner._resize(1)
    interpreter = runner.interpreter
    x = runner._quantize(np.ascontiguousarray(image.transpose(0, 2, 3, 1)))
    index_in, index_out = runner._input["index"], runner._output["index"]

    def once(_: int) -> None:
        interpreter.set_tensor(index_in, x)
        interpreter.invoke()
        interpreter.get_tensor(index_out)

    return once


def time_interleaved_stats(timers: dict[str, object], warmup: int, runs: int) -> dict[str, dict]:
    """Time the precisions in alternating rounds (edgekit.timing), so load from other users of the
    shared CPU lands on all of them alike instead of on whichever ran during a busy minute."""
    stats = {}
    for name, values in time_interleaved(timers, runs, warmup, rounds=max(1, runs // 10)).items():
        summary = percentiles(values)
        stats[name] = {"p50_ms": summary["p50"], "p90_ms": summary["p90"], "mean_ms": summary["mean"],
                       "min_ms": summary["min"], "runs": summary["runs"], "warmup": warmup}
    return stats


def time_predict(runner: tflite.TFLiteRunner, image: np.ndarray, warmup: int, runs: int) -> float:
    """The Runner contract's cost (NCHW float in, layout change and (de)quantization included): p50 ms."""
    return percentiles(time_calls(lambda _: runner.predict(image), runs, warmup))["p50"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = load_data(calibration_data_config(CALIBRATION))
    model = build_model(ModelSpec.from_width(1.0)).eval()
    calibration = load_calibration(CALIBRATION, data, model.spec)
    images = to_unit_float(data.test_x[:256]).numpy()
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
    rows, runners = [], {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        source = save_checkpoint(Path(tmp) / "w1.pt", model, data.classes)
        for precision in ("fp32", "fp16", "int8"):
            start = time.perf_counter()
            path = tflite.export(source, Path(tmp) / f"w1.{precision}.tflite", precision, ExportOptions(),
                                 calibration if precision == "int8" else None)
            convert_s = time.perf_counter() - start
            runner = tflite.load_runner(path, threads=args.threads)
            logits = runner.predict(images)
            census = tflite.census(path)
            runners[precision] = runner
            rows.append({
                "precision": precision, "counted_precision": census["precision"],
                "size_bytes": path.stat().st_size, "convert_s": round(convert_s, 1),
                "max_abs_vs_torch": float(np.abs(logits - reference).max()),
                "top1_agreement_vs_torch": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "float_ops": census["float_ops"] if precision == "int8" else None,
            })
        timings = time_interleaved_stats({p: invoke_timer(r, images[:1]) for p, r in runners.items()},
                                   args.warmup, args.runs)
        for row in rows:
            row.update({k: round(v, 3) if isinstance(v, float) else v for k, v in timings[row["precision"]].items()})
            row["predict_p50_ms"] = round(time_predict(runners[row["precision"]], images[:1], args.warmup,
                                                       args.runs // 2), 3)
    result = {
        "what": "TFLite batch-1 latency, width-1 ResNet18 (random weights), LiteRT interpreter (XNNPACK)",
        "threads": args.threads, "macs": count_macs(model), "calibration": calibration.manifest_ref(),
        "rows": rows, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "note": ("shared machine: 2 cores used by several engineers at once; treat the numbers as an upper "
                 "bound and compare precisions within this run only. Agreement with torch is on random "
                 "weights, so it checks the conversion, not accuracy."),
        "versions": library_versions(), "machine": machine_info(), "python": platform.python_version(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "tflite-probe.json", json.dumps(result, indent=2) + "\n")
    lines = [
        "# TFLite probe: batch-1 latency, width-1 ResNet18",
        "",
        f"CPU: {result['machine']['processor']}, {args.threads} interpreter threads, {args.warmup} warm-up + "
        f"{args.runs} timed invoke() calls per precision, interleaved in blocks of 10. tensorflow {result['versions'].get('tensorflow')}, ai-edge-litert "
        f"{result['versions'].get('ai-edge-litert')}. Load average before/after: "
        f"{load_before[0]:.1f} / {result['load_average_after'][0]:.1f}.",
        "",
        "| precision | counted | size (MB) | p50 invoke (ms) | p90 (ms) | min (ms) | p50 predict() (ms) | top-1 agree vs torch | max abs vs torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['counted_precision']} | {r['size_bytes'] / 1e6:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['min_ms']:.2f} | {r['predict_p50_ms']:.2f} | {r['top1_agreement_vs_torch']:.1%} | "
                     f"{r['max_abs_vs_torch']:.3g} |")
    lines += ["", f"Note: {result['note']}", ""]
    atomic_write_text(RESULTS / "tflite-probe.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
