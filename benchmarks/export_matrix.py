"""Export matrix: every (target, precision) from a trained model and its pruned and int8 children.

    .venv/bin/python benchmarks/export_matrix.py \
        --source fp32=artifacts/ref-cpu/best.pt --source pruned=artifacts/compress/pruned.pt \
        --source ptq-int8=artifacts/compress/ptq.pt --source qat-int8=artifacts/compress/qat.pt \
        --source pruned-ptq-int8=artifacts/compress/pruned-ptq.pt --name export-cpu

Each export goes through `edgekit.export.export_artifact`, so through the parity gate: the file
and its source run on the same seeded test images (here the whole test split, so "accuracy
within 0.5 pt of the int8 source" is measured on all of it). A refused export, or one this machine
cannot make (TensorRT without a GPU), is a row that says why. Writes
benchmarks/results/<name>.json and .md with the machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _repo import ROOT, repo_path, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, read_manifest, sha256_file  # noqa: E402
from edgekit.bench import environment  # noqa: E402
from edgekit.config import ExportOptions  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.export import export_artifact  # noqa: E402
from edgekit.formats import FORMATS, export_targets  # noqa: E402
from edgekit.qmodel import is_quantized_artifact  # noqa: E402
from edgekit.report import RichReporter, markdown_table  # noqa: E402
from edgekit.validate import tolerance_for  # noqa: E402


def gate_rule(target: str, precision: str, source_precision: str) -> str:
    tol = tolerance_for(target, precision)
    parts = [f"agreement >= {tol.min_agreement:.1%}"]
    if tol.max_abs is not None:
        parts.append(f"max|err| <= {tol.max_abs:g}")
    if tol.min_cosine is not None:
        parts.append(f"cosine >= {tol.min_cosine:g}")
    drop = tol.max_drop_vs_int8_source if source_precision == "int8" else tol.max_drop_vs_fp32_source
    if drop is not None:
        parts.append(f"drop <= {drop:g} pt vs {source_precision} source")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", required=True, help="label=path of an edgekit .pt artifact")
    parser.add_argument("--calibration", type=Path, default=ROOT / "calibration/cifar10-jpg-512.json")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "artifacts/export-matrix")
    parser.add_argument("--name", default="export-cpu")
    parser.add_argument("--parity-images", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="")
    parser.add_argument("--append", action="store_true",
                        help="add these sources' rows to the existing <name>.json (replacing rows of the same label)")
    args = parser.parse_args()
    args.out_dir = args.out_dir.resolve()

    reporter = RichReporter()
    start = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    options = ExportOptions(calibration=str(args.calibration), parity_images=args.parity_images, threads=args.threads)
    rows = []
    for spec in args.source:
        label, _, path_text = spec.partition("=")
        source = Path(path_text)
        int8_source = is_quantized_artifact(source)
        source_precision = "int8" if int8_source else "fp32"
        for target in export_targets():
            for precision in FORMATS[target].precisions:
                if int8_source and precision != "int8":
                    continue  # an int8 model exports as int8 only (fp32/fp16 come from its float parent)
                out = args.out_dir / f"{label}.{precision}{FORMATS[target].suffix}"
                row = {"source": label, "source_file": str(source), "source_sha256": sha256_file(source),
                       "source_precision": source_precision, "target": target, "requested_precision": precision,
                       "gate": gate_rule(target, precision, source_precision)}
                reporter.info(f"export-matrix: {label} -> {target} {precision}")
                began = time.perf_counter()
                try:
                    result = export_artifact(source, target, precision, out, options, reporter)
                except EdgekitError as exc:
                    row.update(status="refused" if exc.__class__.__name__ == "ParityError" else "not made",
                               reason=exc.message)
                else:
                    manifest = read_manifest(result.path)
                    census = manifest["metrics"]["census"]
                    runtime = census.get("runtime") or {}
                    row.update(status="kept", file=repo_path(result.path),
                               file_bytes=manifest["size_bytes"], precision_in_file=result.precision,
                               precision_executed=result.executed_precision,
                               top1_agreement=result.parity.top1_agreement, max_abs=result.parity.max_abs,
                               cosine_mean=result.parity.cosine_mean, source_accuracy=result.parity.source_accuracy,
                               export_accuracy=result.parity.exported_accuracy,
                               drop_points=result.parity.accuracy_drop_points,
                               weights_by_dtype=census.get("weights_by_dtype"),
                               integer_convs_in_ort=runtime.get("integer_conv_gemm"),
                               float_convs_in_ort=runtime.get("float_conv_gemm"))
                row["seconds"] = round(time.perf_counter() - began, 1)
                rows.append(row)

    env = environment(args.threads)
    command = script_command()
    result = {"name": args.name, "note": args.note, "parity_images": args.parity_images,
              "calibration": str(args.calibration), "environment": env, "versions": env["versions"],
              "commands": [command], "wall_seconds": round(time.perf_counter() - start, 1), "rows": rows}
    results = ROOT / "benchmarks/results"
    results.mkdir(parents=True, exist_ok=True)
    if args.append:  # a source made later (a long fine-tune) joins the same table
        previous = json.loads((results / f"{args.name}.json").read_text())
        labels = {r["source"] for r in rows}
        rows = [r for r in previous["rows"] if r["source"] not in labels] + rows
        result.update(rows=rows, note=args.note or previous.get("note", ""),
                      commands=previous.get("commands", []) + [command],
                      wall_seconds=round(previous.get("wall_seconds", 0) + result["wall_seconds"], 1),
                      environments=previous.get("environments", [previous.get("environment")]) + [env])
    atomic_write_text(results / f"{args.name}.json", json.dumps(result, indent=2) + "\n")

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    table = []
    for r in rows:
        kept = r["status"] == "kept"
        table.append([r["source"], r["target"], r["requested_precision"],
                      r["status"] if kept else f"{r['status']}: {r['reason'][:110]}",
                      r.get("precision_in_file", "-"), r.get("precision_executed", "-"),
                      pct(r.get("top1_agreement")), f"{r['max_abs']:.3g}" if kept else "-",
                      pct(r.get("source_accuracy")), pct(r.get("export_accuracy")),
                      f"{r['drop_points']:+.2f}" if kept else "-",
                      f"{r['file_bytes'] / 1e6:.2f}" if kept else "-",
                      f"{r['integer_convs_in_ort']}/{r['integer_convs_in_ort'] + r['float_convs_in_ort']}"
                      if kept and r.get("integer_convs_in_ort") is not None else "-"])
    columns = ["source", "target", "asked", "status", "in file", "executed", "top-1 agree", "max |err|",
               "source acc", "export acc", "drop pt", "MB", "int convs (ORT)"]
    kept = sum(r["status"] == "kept" for r in rows)
    md = (f"# {args.name}: every export through the parity gate\n\n{result['note']}\n\n"
          "Commands:\n\n" + "\n".join(f"    {c}" for c in result["commands"]) + "\n\n"
          f"Machine: {env['cpu']}, {env['cores']} cores (flags: {' '.join(env['cpu_flags'])}); "
          f"threads {args.threads}; load average at start {env['load_average_start']}; "
          f"parity on {args.parity_images} seeded test images (accuracy columns are on those images); "
          f"calibration `{repo_path(args.calibration)}`.\n"
          f"Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(result["versions"].items())) + ".\n\n"
          f"{kept} of {len(rows)} exports kept; wall time {result['wall_seconds']:.0f} s.\n\n"
          "'in file' is the precision counted in the written file; 'executed' what the runtime computes "
          "(ORT's optimized graph for ONNX). 'drop pt' is source accuracy minus export accuracy. "
          "'int convs (ORT)': convolutions and Gemm ONNX Runtime runs as integer kernels.\n\n"
          + markdown_table(columns, table)
          + "\n\nGates (each format's tolerances in edgekit/formats/__init__.py):\n\n"
          + "\n".join(sorted({f"- {r['target']} {r['requested_precision']} from {r['source_precision']}: {r['gate']}"
                              for r in rows})) + "\n")
    atomic_write_text(results / f"{args.name}.md", md)
    reporter.info(md)


if __name__ == "__main__":
    main()
