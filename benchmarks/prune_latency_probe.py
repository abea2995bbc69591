"""How much pruning does int8 need to be 2x faster at batch 1? Latency against MACs, per runtime.

The bench issue asks the best CPU artifact (within 1 pt of fp32) to be at least 2x faster than
the best stock int8 of the unpruned model. At width 0.5 a batch-1 int8 call is a few hundred
microseconds, so a fixed per-call and per-op cost dilutes every MAC saved. This probe measures
that curve before spending fine-tuning time: random-weight CIFAR ResNet18s of the shapes a
uniform channel prune gives (every conv `1 - ratio` as wide, rounded to `--round-to`), each
exported as fp32 ONNX and edgekit's QDQ int8 (uint8 activations, the same path as the stock ORT
`quantize_static` with uint8 activations) and as full-integer TFLite int8, timed in interleaved
rounds by ONNX Runtime, OpenVINO (where installed) and the TFLite interpreter. Latency depends on shapes, not on weight values.

    .venv/bin/python benchmarks/prune_latency_probe.py [--width 0.5] [--ratios 0 0.3 0.4 0.5 0.6]

Writes benchmarks/results/prune-latency-probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from edgekit.artifacts import library_versions, machine_info
from edgekit.bench import environment
from edgekit.config import ExportOptions
from edgekit.formats import FORMATS
from edgekit.formats import onnx as onnx_format
from edgekit.model import ModelSpec, ResNet18, count_macs, save_checkpoint
from edgekit.report import markdown_table
from onnx_int8_probe import interleaved_runner_latency_ms  # benchmarks/ is the script's directory

RESULTS = Path(__file__).parent / "results"


def pruned_spec(width: float, ratio: float, round_to: int) -> ModelSpec:
    base = ModelSpec.from_width(width)

    def keep(channels: int) -> int:
        return max(round_to, int(round(channels * (1 - ratio) / round_to)) * round_to)

    return ModelSpec(stage_channels=tuple(keep(c) for c in base.stage_channels),
                     block_channels=tuple(keep(c) for c in base.block_channels), width=width)


def with_bn_statistics(model: ResNet18) -> ResNet18:
    """Random weights with running BN statistics from random inputs, so folded weights are not degenerate."""
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(32, 3, 32, 32))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    calib = np.random.default_rng(1).random((64, 3, 32, 32), dtype=np.float32)
    env = environment(args.threads)
    runtimes = [r for r in FORMATS["onnx"].all_runtimes() if r.unavailable() is None]
    tflite = FORMATS["tflite"] if FORMATS["tflite"].unavailable_reason() is None else None
    shapes, runners = {}, {}
    with tempfile.TemporaryDirectory(prefix="prune-probe-") as scratch:
        for ratio in args.ratios:
            spec = pruned_spec(args.width, ratio, args.round_to)
            model = with_bn_statistics(ResNet18(spec))
            base = Path(scratch) / f"r{ratio}"
            fp32 = onnx_format.export_module(model, base.with_suffix(".fp32.onnx"))
            int8 = onnx_format.quantize_qdq(fp32, base.with_suffix(".int8.onnx"), calib)
            shapes[ratio] = {"macs": count_macs(model), "stage_channels": list(spec.stage_channels)}
            for precision, path in (("fp32", fp32), ("int8", int8)):
                for runtime in runtimes:
                    runners[(ratio, precision, runtime.name)] = runtime.load(path, args.threads)
            if tflite is not None:
                checkpoint = save_checkpoint(base.with_suffix(".pt"), model, [str(i) for i in range(10)])
                calibration = SimpleNamespace(images=calib, definition={})
                path = tflite.module().export(checkpoint, base.with_suffix(".int8.tflite"), "int8", ExportOptions(),
                                              calibration)
                runners[(ratio, "int8", "tflite")] = tflite.module().load_runner(path, args.threads)
        latency = interleaved_runner_latency_ms(runners, args.runs)
    base_macs = shapes[args.ratios[0]]["macs"]
    records, rows = [], []
    for (ratio, precision, runtime), lat in latency.items():
        reference = latency[(args.ratios[0], precision, runtime)]["p50"]
        record = {"ratio": ratio, "precision": precision, "runtime": runtime, **shapes[ratio],
                  "macs_reduction": base_macs / shapes[ratio]["macs"], "p50_ms": lat["p50"], "p90_ms": lat["p90"],
                  "speedup_vs_unpruned_same_runtime": reference / lat["p50"]}
        records.append(record)
        rows.append([f"{ratio:.2f}", str(shapes[ratio]["stage_channels"]), f"{record['macs_reduction']:.2f}x",
                     precision, runtime, f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                     f"{record['speedup_vs_unpruned_same_runtime']:.2f}x"])
    meta = {"width": args.width, "round_to": args.round_to, "threads": args.threads, "runs": args.runs,
            "batch": 1, "environment": env, "machine": machine_info(), "versions": library_versions(),
            "load_average_after": list(os.getloadavg()), "note": args.note}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prune-latency-probe.json").write_text(json.dumps({"meta": meta, "rows": records}, indent=2) + "\n")
    text = ["# Pruning against batch-1 latency (random weights, shapes of a uniform prune)", "",
            f"Width {args.width}, channels rounded to {args.round_to}; batch 1, {args.threads} threads, {args.runs} "
            "timed calls per file after 20 warm-up, interleaved over all files in 10 rounds. "
            f"CPU: {env['cpu']} ({' '.join(env['cpu_flags'])}); "
            f"load average at start {env['load_average_start']}, at end {meta['load_average_after']}.",
            *([args.note] if args.note else []), "",
            markdown_table(["ratio", "stage channels", "MACs reduction", "precision", "runtime", "p50 ms", "p90 ms",
                            "speed-up vs unpruned (same precision, runtime)"], rows), ""]
    (RESULTS / "prune-latency-probe.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
