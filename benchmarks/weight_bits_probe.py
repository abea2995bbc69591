"""What 7-bit int8 ONNX weights buy on this CPU: edgekit's int8 file against the same recipe with 8-bit weights.

    .venv/bin/python benchmarks/weight_bits_probe.py --data-dir /tmp/cifar10-jpg

For each reference checkpoint (both committed ones by default): its fp32 ONNX, then the QDQ int8
file `edgekit export --target onnx --precision int8` writes (per-channel weights on 7 bits, uint8
activations, minmax over the committed 512-image calibration set) and the same file with full
8-bit weights. Each int8 file runs in ONNX Runtime on the whole test split against the fp32 file:
accuracy, top-1 agreement, logit error, McNemar, and the verdict of the export's own parity gate.
The largest u8 x s8 pair sum each file's weight codes allow is read from the file: above 32,767 it
saturates the int16 of VPMADDUBSW, the kernel of x86 CPUs without VNNI, so the 8-bit file is
expected to lose accuracy on an AVX2-only CPU and not on one with VNNI (the CPU flags are recorded).
Writes benchmarks/results/<--name>.{json,md}, by default onnx-weight-bits-cpu-<avx2|avx512-bf16>.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from _repo import ROOT, machine_kind, repo_path, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import (INT8_DOT_PRODUCT_FLAGS, atomic_write_text, cpu_flags, library_versions,
                               machine_info, sha256_file)
from edgekit.bench.measure import load_average
from edgekit.calibrate import load_calibration
from edgekit.config import DataConfig, DataSource
from edgekit.data import load_data, to_unit_float
from edgekit.formats import onnx as onnx_format
from edgekit.formats.onnx_int8 import INT16_MAX, u8s8_pair_bound
from edgekit.model import load_checkpoint
from edgekit.report import markdown_table
from edgekit.timing import predict_batched
from edgekit.validate import parity, tolerance_for, violations

RESULTS = ROOT / "benchmarks/results"
REFERENCES = [ROOT / "benchmarks/models/resnet18-w1-cpu.fp16.pt", ROOT / "benchmarks/models/resnet18-w0.5-cpu.fp16.pt"]
CALIBRATION = ROOT / "calibration/cifar10-jpg-512.json"
WEIGHT_BITS = (7, 8)  # 7: what edgekit writes; 8: ORT's default without reduce_range


def probe(checkpoint: Path, data, work: Path, threads: int) -> list[dict]:
    loaded = load_checkpoint(checkpoint)
    calibration = load_calibration(CALIBRATION, data, loaded.spec)
    images, labels = to_unit_float(data.test_x).numpy(), data.test_y.numpy()
    work.mkdir(parents=True, exist_ok=True)
    fp32 = onnx_format.export_module(loaded.build(), work / "fp32.onnx", dynamic_batch=True)
    source = onnx_format.load_runner(fp32, threads)
    source_logits = predict_batched(source.predict, images, 250)  # once: both weight widths compare against it
    rows = []
    for bits in WEIGHT_BITS:
        path = onnx_format.quantize_qdq(fp32, work / f"int8-w{bits}.onnx", calibration.images, batch=None,
                                        weight_bits=bits)
        print(f"{checkpoint.name}: {bits}-bit weights, running the test split in ONNX Runtime", flush=True)
        report = parity(source, onnx_format.load_runner(path, threads), images, labels, batch_size=250,
                        source_logits=source_logits)
        bound = u8s8_pair_bound(path)
        problems = violations(report, "onnx", "int8")
        rows.append({"checkpoint": repo_path(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                     "weight_bits": bits, "edgekit_default": bits == 7, "file_bytes": path.stat().st_size,
                     "max_u8s8_pair_sum": bound["max_pair_sum"], "fits_int16": bound["fits_int16"],
                     "gate": "passes" if not problems else "refused: " + "; ".join(problems),
                     **report.as_metrics()})
    return rows


def render(result: dict) -> str:
    rows = result["rows"]
    table = markdown_table(
        ["checkpoint", "weights", "largest u8 x s8 pair sum", "fp32 ONNX test", "int8 ONNX test", "drop (pt)",
         "agreement", "McNemar p", "max abs logit error", "mean cosine", "export gate"],
        [[Path(r["checkpoint"]).name, f"{r['weight_bits']}-bit" + (" (edgekit)" if r["edgekit_default"] else ""),
          f"{r['max_u8s8_pair_sum']:,} ({'fits' if r['fits_int16'] else 'exceeds'} int16)",
          f"{100 * r['source_accuracy']:.2f} %", f"{100 * r['exported_accuracy']:.2f} %",
          f"{r['accuracy_drop_points']:+.2f}", f"{100 * r['top1_agreement']:.2f} %", f"{r['drop_p_value']:.2g}",
          f"{r['max_abs']:.3g}", f"{r['cosine_mean']:.5f}", r["gate"]] for r in rows])
    flags = " ".join(result["cpu_flags"]) or "none"
    tolerance = result["gate_tolerance"]
    gate = (f"top-1 agreement >= {tolerance['min_agreement']:.0%}, mean cosine >= {tolerance['min_cosine']}, "
            f"at most {tolerance['max_drop_vs_fp32_source']} points below the fp32 source")
    vnni = "with" if INT8_DOT_PRODUCT_FLAGS & set(result["cpu_flags"]) else "without"
    return (f"# int8 ONNX weights on 7 bits or 8: what ONNX Runtime computes on this CPU\n\n"
            f"Machine: {result['machine'].get('processor')}, {result['machine'].get('cpu_count')} cores, "
            f"CPU flags of interest: {flags} ({vnni} VNNI); onnxruntime {result['versions'].get('onnxruntime')}, "
            f"{result['threads']} threads; load average {result['load_average_start']} at the start, "
            f"{result['load_average_end']} at the end; {result['wall_seconds']:.0f} s.\n\n"
            f"Both int8 files: QDQ, per-channel symmetric int8 weights, uint8 activations, minmax over "
            f"`{result['calibration']}`, quantized from the plain fp32 export; they differ only in the "
            f"weights' range ([-64, 64] against [-127, 127]). Each is compared with its fp32 ONNX file on all "
            f"{result['test_images']:,} test images (drop: fp32 minus int8; McNemar: exact, on the images "
            f"only one of the two gets right). A pair sum above {INT16_MAX:,} can saturate the int16 of "
            f"VPMADDUBSW, the u8 x s8 kernel of x86 CPUs without VNNI; with VNNI (VPDPBUSD, int32 sums) and on "
            f"ARM it cannot. Export gate: `edgekit export`'s int8 parity tolerance when this ran "
            f"({gate}), applied here to the whole test split.\n\n{table}\n\n"
            + (f"{result['note']}\n\n" if result.get("note") else "")
            + f"Reproduce: `{result['command']}`\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--checkpoint", type=Path, nargs="+", default=REFERENCES)
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts/weight-bits-probe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=None, help="results file stem (default onnx-weight-bits-cpu-<kind>)")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # ORT's "consider pre-processing" notice, once per quantization
    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), load_average()
    data = load_data(DataConfig(source=DataSource.folder, data_dir=args.data_dir))
    rows = [row for checkpoint in args.checkpoint
            for row in probe(checkpoint, data, args.work / checkpoint.name.removesuffix(".pt"), args.threads)]
    result = {"command": script_command(), "calibration": repo_path(CALIBRATION), "test_images": len(data.test_y),
              "threads": args.threads, "machine": machine_info(), "cpu_flags": cpu_flags(),
              "versions": library_versions(), "load_average_start": load_start, "load_average_end": load_average(),
              "wall_seconds": time.perf_counter() - started, "note": args.note,
              "gate_tolerance": asdict(tolerance_for("onnx", "int8")), "rows": rows}
    name = args.name or f"onnx-weight-bits-cpu-{machine_kind()}"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
