"""The ARM int8 path measured on this x86 CPU: qnnpack against fbgemm, one reference, one run.

    .venv/bin/python benchmarks/qnnpack.py

Runs, one at a time and niced, the commands a user would (recorded in the results):
  1. `edgekit quantize <reference> --mode static --backend qnnpack` and the same with fbgemm
     (each writes its int8 .pt, its QDQ ONNX gated on parity, and their manifests);
  2. `edgekit bench` over the fp32 reference, both int8 files and both QDQ ONNX files, batch 1;
then writes benchmarks/results/qnnpack-cpu.json and .md: accuracy (val and test) of each, parity
of each QDQ export against its int8 source, batch-1 latency (qnnpack's labelled "x86 via qnnpack:
not representative of ARM"), the machine, the load average and the commands.

What this measures and what it does not: qnnpack's accuracy and the parity of its exports are
its integer arithmetic (same scales, zero points and requantization in its x86 and ARM kernels;
not checked on an ARM board here); its latency here is its x86 (SSE2) kernels on a shared 2-core
x86 CPU and says nothing about an ARM board.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _repo import ROOT, repo_path  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, library_versions, machine_info, read_manifest, sha256_file  # noqa: E402
from edgekit.qengine import engine_latency_note, host_cpu  # noqa: E402
from edgekit.report import markdown_table  # noqa: E402

ENGINES = ("qnnpack", "fbgemm")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(command: list[str], log: list[dict], steps_file: Path) -> None:
    """One step, niced, in the repository root; its command line, time and load average recorded
    (in `steps_file` as well, so --render-only can rebuild the results from a finished run)."""
    start, load = time.perf_counter(), load_average()
    shown = shlex.join([repo_path(Path(command[0])), *command[1:]])
    print("$ " + shown, flush=True)
    subprocess.run(["nice", "-n", "10", *command], cwd=ROOT, check=True)
    log.append({"command": shown, "seconds": round(time.perf_counter() - start, 1),
                "load_average_before": load, "load_average_after": load_average()})
    atomic_write_text(steps_file, json.dumps(log, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("benchmarks/models/resnet18-w0.5-cpu.fp16.pt"))
    parser.add_argument("--calibration", type=Path, default=Path("calibration/cifar10-jpg-512.json"))
    parser.add_argument("--source", default="folder")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/cifar10-jpg"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/qnnpack"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=1, help="threads for the quantize latency and the bench")
    parser.add_argument("--note", action="append", default=[], help="a finding to record with the results")
    parser.add_argument("--render-only", action="store_true",
                        help="no runs: rebuild the results from the finished run in --work")
    args = parser.parse_args()

    edgekit = str(Path(sys.executable).with_name("edgekit"))
    work = args.work
    (ROOT / work).mkdir(parents=True, exist_ok=True)
    steps_file = ROOT / work / "steps.json"
    int8 = {engine: work / f"int8-{engine}.pt" for engine in ENGINES}
    qdq = {engine: out.with_suffix(".qdq.onnx") for engine, out in int8.items()}
    bench_out = work / "bench"
    if args.render_only:
        log = json.loads(steps_file.read_text())
        start_load = log[0]["load_average_before"]
    else:
        log = []
        start_load = load_average()
        for engine, out in int8.items():
            run([edgekit, "quantize", str(args.checkpoint), "--mode", "static", "--backend", engine,
                 "--calibration", str(args.calibration), "--threads", str(args.threads), "--out", str(out),
                 "--force"], log, steps_file)
        run([edgekit, "bench", str(args.checkpoint), *(str(int8[e]) for e in ENGINES),
             *(str(qdq[e]) for e in ENGINES), "--batches", "1", "--threads", str(args.threads), "--source",
             args.source, "--data-dir", str(args.data_dir), "--out", str(bench_out)], log, steps_file)

    bench = json.loads((ROOT / bench_out.with_suffix(".json")).read_text())
    rows_by_file: dict[str, dict] = {}
    for r in bench["rows"]:  # a file's first runtime (the format's own, e.g. ONNX Runtime for .onnx)
        rows_by_file.setdefault(repo_path(ROOT / r["artifact"]), r)
    fp32_row = rows_by_file[repo_path(ROOT / args.checkpoint)]
    engines = []
    for engine in ENGINES:
        manifest = read_manifest(ROOT / int8[engine])
        metrics, recipe = manifest["metrics"], manifest["extra"]["recipe"]
        torch_row, onnx_row = rows_by_file[repo_path(ROOT / int8[engine])], rows_by_file[repo_path(ROOT / qdq[engine])]
        onnx_manifest = read_manifest(ROOT / qdq[engine]) if (ROOT / qdq[engine]).exists() else None
        parity = onnx_manifest["metrics"]["parity"] if onnx_manifest else None
        engines.append({
            "engine": engine, "artifact": repo_path(ROOT / int8[engine]), "sha256": manifest["sha256"],
            "method": recipe.get("method"), "methods_tried": recipe.get("methods_tried"),
            "engine_recipe": recipe.get("engine"),
            "fp32_val_accuracy": metrics["fp32_val_accuracy"], "fp32_test_accuracy": metrics["fp32_test_accuracy"],
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "accuracy_drop_test_pt": metrics["accuracy_drop_test_pt"],
            "bench_test_accuracy": torch_row["accuracy"], "bench_agreement_fp32": torch_row["agreement_root"],
            "file_bytes": metrics["file_bytes"],
            "latency_p50_ms": (torch_row.get("latency_ms") or {}).get("p50"),
            "latency_label": engine_latency_note(engine), "runner": torch_row.get("runner"),
            "bench_notes": torch_row.get("notes"),
            "qdq_onnx": repo_path(ROOT / qdq[engine]) if onnx_manifest else None,
            "qdq_parity": parity, "qdq_grid": (onnx_manifest or {}).get("extra", {}).get("qdq_from_int8_artifact"),
            "qdq_bench_test_accuracy": onnx_row["accuracy"],
            "qdq_latency_p50_ms": (onnx_row.get("latency_ms") or {}).get("p50"),
        })
    result = {"checkpoint": repo_path(ROOT / args.checkpoint), "checkpoint_sha256": sha256_file(ROOT / args.checkpoint),
              "calibration": str(args.calibration), "host_cpu": host_cpu(), "machine": machine_info(),
              "cpu_flags": bench["environment"].get("cpu_flags"), "versions": library_versions(),
              "threads": args.threads, "load_average_start": start_load,
              "load_average_end": log[-1]["load_average_after"],
              "bench_environment": bench["environment"], "bench_protocol": bench["protocol"],
              "fp32": {"test_accuracy": fp32_row["accuracy"], "latency_p50_ms": fp32_row["latency_ms"]["p50"],
                       "val_images": fp32_row["val_images"], "test_images": fp32_row["test_images"]},
              "engines": engines, "notes": args.note, "steps": log, "bench_files": repo_path(ROOT / bench_out) + ".{json,md,csv}"}
    results = ROOT / args.results
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "qnnpack-cpu.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(results / "qnnpack-cpu.md", markdown(result))
    print(markdown(result))


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f} %"


def markdown(result: dict) -> str:
    machine = result["machine"]
    rows = []
    for e in result["engines"]:
        act, weight = e["engine_recipe"]["activation"], e["engine_recipe"]["weight"]
        parity = e["qdq_parity"]
        label = e["latency_label"] or f"{result['host_cpu']} via {e['engine']}: this CPU's own kernels"
        rows.append([e["engine"], f"{act['quant_min']}..{act['quant_max']} ({act['bits']}-bit)"
                     + (", reduce_range" if act["reduce_range"] else ""),
                     "per-channel" if weight["per_channel"] else "per-tensor", e["method"],
                     pct(e["val_accuracy"]), pct(e["test_accuracy"]), f"{-e['accuracy_drop_test_pt']:+.2f}",
                     *([pct(parity["top1_agreement"]), f"{parity['accuracy_drop_points']:+.2f}",
                        f"{parity['cosine_mean']:.5f}"] if parity else ["not written: failed the gate", "", ""]),
                     pct(e["qdq_bench_test_accuracy"]) if parity else "",
                     f"{e['latency_p50_ms']:.3f}", label])
    table = markdown_table(["engine", "activations", "weights", "calibration (auto's pick)", "int8 val", "int8 test",
                            "test vs fp32 (pt)", "QDQ ONNX agreement", "QDQ drop vs int8 (pt)", "QDQ cosine",
                            "QDQ ONNX test (ORT)", "torch int8 p50 ms, batch 1", "latency label"], rows)
    steps = "\n".join(f"    {s['command']}    # {s['seconds']} s, load {s['load_average_before']} -> "
                      f"{s['load_average_after']}" for s in result["steps"])
    fp32 = result["fp32"]
    notes = "".join(f"- {note}\n" for note in result.get("notes") or [])
    return (f"# The ARM int8 path (qnnpack), measured on x86\n\n"
            f"Reference: `{result['checkpoint']}` (fp32 test {pct(fp32['test_accuracy'])}, "
            f"p50 {fp32['latency_p50_ms']:.3f} ms), calibration `{result['calibration']}`.\n"
            f"Machine: {machine.get('processor')}, {machine.get('cpu_count')} cores, flags "
            f"{' '.join(result.get('cpu_flags') or [])}; torch {result['versions'].get('torch')}, onnxruntime "
            f"{result['versions'].get('onnxruntime')}; {result['threads']} thread(s); load average "
            f"{result['load_average_start']} at the start, {result['load_average_end']} at the end (on 2 cores "
            "that other work may share: compare latencies within this run only).\n\n"
            + table +
            f"\n\nAccuracy: val ({fp32['val_images']:,} images) and test ({fp32['test_images']:,}) from `edgekit "
            "quantize`; the bench's own test pass "
            "over the same files is in the JSON (`bench_test_accuracy`). QDQ ONNX: the file `quantize` writes beside "
            "each int8 model, gated against it on 256 seeded test images (agreement, accuracy drop, mean cosine of "
            "logits; the int8-vs-int8 gate allows 0.5 pt), then run on the full test split in ONNX Runtime.\n\n"
            "**What is measured here:** qnnpack's accuracy and the parity of its QDQ export: its integer arithmetic "
            "(the same scales, zero points and requantization in its x86 and ARM kernels; bit-equality on a board "
            "was not checked here). **What is not:** ARM latency. "
            "qnnpack's latency here is its x86 (SSE2) kernels on a shared x86 CPU: "
            "x86 via qnnpack: not representative of ARM.\n\n"
            + (f"## Notes\n\n{notes}\n" if notes else "") +
            f"Commands (from the repository root; the bench files are `{result['bench_files']}`):\n\n{steps}\n")


if __name__ == "__main__":
    main()
