"""Training throughput of ResNet18 on this machine, and what a full reference run would take.

    .venv/bin/python benchmarks/train_speed.py --name train-speed-cpu

Times real SGD steps (forward, cross-entropy, backward, Nesterov update) of the chosen width on
random 32x32 batches, for each numeric mode this CPU can run: fp32 in NCHW and channels_last,
and bf16 autocast only where the CPU has native bf16 (edgekit refuses --cpu-bf16 elsewhere).
From the best mode it works out the epoch time (47,500 training images) and the hours an
80-epoch reference run needs, which is what decides whether a full-width run fits a session.
Writes benchmarks/results/<name>.{json,md} with the machine and the load it ran under.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from _repo import ROOT, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, cpu_flags, library_versions, machine_info
from edgekit.bench.measure import load_average
from edgekit.model import ModelSpec, build_model
from edgekit.report import markdown_table
from edgekit.timing import percentiles, time_calls
from edgekit.train import cpu_has_native_bf16

RESULTS = ROOT / "benchmarks/results"
TRAIN_IMAGES = 47_500  # CIFAR-10 train minus the 2,500-image validation split
REFERENCE_EPOCHS = 80


def step_fn(width: float, batch: int, channels_last: bool, bf16: bool, seed: int):
    torch.manual_seed(seed)
    model = build_model(ModelSpec.from_width(width, 10), seed=seed).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))

    def step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="train-speed-cpu")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    modes = [("fp32", False, False), ("fp32 channels_last", True, False)]
    if cpu_has_native_bf16():
        modes.append(("bf16 autocast channels_last", True, True))
    load_start = load_average()
    rows = []
    for label, channels_last, bf16 in modes:
        step = step_fn(args.width, args.batch_size, channels_last, bf16, seed=0)
        stats = percentiles(time_calls(step, args.steps, warmup=2))
        images_per_s = args.batch_size / (stats["p50"] / 1000)
        rows.append({"mode": label, "step_ms": stats, "images_per_s": round(images_per_s, 1),
                     "epoch_minutes": round(TRAIN_IMAGES / images_per_s / 60, 1),
                     "reference_run_hours": round(REFERENCE_EPOCHS * TRAIN_IMAGES / images_per_s / 3600, 1)})
        print(f"{label}: {images_per_s:.1f} images/s, epoch {rows[-1]['epoch_minutes']} min")
    best = max(rows, key=lambda r: r["images_per_s"])
    result = {
        "what": f"ResNet18 width {args.width} training steps, batch {args.batch_size}, random data",
        "command": script_command(),
        "machine": machine_info(), "cpu_flags": cpu_flags(), "native_bf16": cpu_has_native_bf16(),
        "threads": args.threads, "load_average_start": load_start, "load_average_end": load_average(),
        "versions": library_versions(), "note": args.note,
        "rows": rows, "best": best["mode"],
        "reference_run": {"epochs": REFERENCE_EPOCHS, "train_images": TRAIN_IMAGES,
                          "hours_at_best_mode": best["reference_run_hours"]},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    table = markdown_table(["mode", "step p50 (ms)", "images/s", "epoch (min)", f"{REFERENCE_EPOCHS} epochs (h)"],
                           [[r["mode"], round(r["step_ms"]["p50"], 1), r["images_per_s"], r["epoch_minutes"],
                             r["reference_run_hours"]] for r in rows])
    md = (f"# Training throughput: {result['what']}\n\n"
          f"Machine: {result['machine'].get('processor')}, {result['machine'].get('cpu_count')} cores, "
          f"{args.threads} torch threads; CPU flags of interest: {' '.join(result['cpu_flags']) or 'none'}; "
          f"native bf16: {'yes' if result['native_bf16'] else 'no (bf16 autocast not run: edgekit refuses it)'}. "
          f"Load average {load_start} at start, {result['load_average_end']} at end. {args.note}\n\n"
          f"{table}\n\n"
          f"Epoch = {TRAIN_IMAGES:,} images at the step rate (data loading and evaluation not included). "
          f"Reproduce: `{result['command']}`\n")
    atomic_write_text(RESULTS / f"{args.name}.md", md)
    print(f"wrote {RESULTS / args.name}.json/.md (median of {args.steps} steps per mode)")


if __name__ == "__main__":
    main()
