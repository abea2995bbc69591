"""Publish a trained checkpoint as the committed reference the full-size benchmarks start from.

    .venv/bin/python benchmarks/publish_reference.py artifacts/ref-cpu/best.pt --name resnet18-w0.5-cpu

Writes benchmarks/models/<name>.fp16.pt (weights stored as fp16: half the bytes, and the only
model file git keeps), its manifest (parent = the fp32 checkpoint and its hash, the training
run's config and metrics, the fp16 copy's own accuracy, measured here) and <name>.fp16.pt.sha256.
Loading it gives float32 weights again (`Checkpoint.build`), so every stage takes it as is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.artifacts import Manifest, atomic_write_text, parent_ref, read_manifest, sha256_file, write_manifest  # noqa: E402
from edgekit.config import data_config_from_dict  # noqa: E402
from edgekit.data import load_data  # noqa: E402
from edgekit.model import load_checkpoint, save_checkpoint  # noqa: E402
from edgekit.prune import accuracy  # noqa: E402
from edgekit.report import RichReporter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/models")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    reporter = RichReporter()
    source = load_checkpoint(args.checkpoint)
    source_manifest = read_manifest(args.checkpoint)
    data = load_data(data_config_from_dict(source.extra.get("data_config")), reporter)
    out = args.out_dir / f"{args.name}.fp16.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, source.build(), source.classes, source.extra, half=True)
    fp16 = load_checkpoint(out).build()
    metrics = {"val_accuracy": accuracy(fp16, data), "test_accuracy": accuracy(fp16, data, "test"),
               "fp32_val_accuracy": source.extra["metrics"]["best_val_accuracy"],
               "fp32_test_accuracy": source.extra["metrics"]["test_accuracy"]}
    write_manifest(out, Manifest(
        kind="checkpoint", format="torch", precision="fp16 storage (fp32 compute)", parent=parent_ref(args.checkpoint),
        config=source_manifest.get("config", {}), seed=source_manifest.get("seed"), metrics=metrics,
        extra={"note": args.note or "the committed reference: weights rounded to fp16 for storage",
               "training_run": {"metrics": source_manifest.get("metrics"), "machine": source_manifest.get("machine"),
                                "versions": source_manifest.get("versions")},
               "data": data.describe()}))
    atomic_write_text(out.with_name(out.name + ".sha256"), f"{sha256_file(out)}  {out.name}\n")
    reporter.info(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): test {metrics['test_accuracy']:.2%} "
                  f"(fp32 {metrics['fp32_test_accuracy']:.2%})")


if __name__ == "__main__":
    main()
