"""Publish a trained checkpoint as the committed reference the full-size benchmarks start from.

    .venv/bin/python benchmarks/publish_reference.py artifacts/ref-cpu/best.pt --name resnet18-w0.5-cpu

Writes benchmarks/models/<name>.fp16.pt (weights stored as fp16: half the bytes, and the only
model file git keeps), its manifest (parent = the fp32 checkpoint and its hash, the training
run's config and metrics, the fp16 copy's own accuracy, measured here through `edgekit eval`'s
library function, plain and with flip / flip-translate TTA on the test split) and
<name>.fp16.pt.sha256. TTA figures are the model's reach, not a deployment figure: every stage
after this one reports plain accuracy.
Loading it gives float32 weights again (`Checkpoint.build`), so every stage takes it as is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _repo import ROOT  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import Manifest, atomic_write_text, parent_ref, read_manifest, sha256_file, write_manifest  # noqa: E402
from edgekit.config import EvalConfig, Split, Tta, data_config_from_dict  # noqa: E402
from edgekit.data import load_data  # noqa: E402
from edgekit.evaluate import evaluate_artifact  # noqa: E402
from edgekit.model import load_checkpoint, save_checkpoint  # noqa: E402
from edgekit.report import RichReporter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/models")
    parser.add_argument("--note", default="")
    parser.add_argument("--data-dir", type=Path, help="where the training data lives now, if it moved")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reporter = RichReporter()
    source = load_checkpoint(args.checkpoint)
    source_manifest = read_manifest(args.checkpoint)
    data_config = data_config_from_dict(source.extra.get("data_config"))
    if args.data_dir is not None:
        data_config.data_dir = str(args.data_dir)
    data = load_data(data_config, reporter)
    out = args.out_dir / f"{args.name}.fp16.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, source.build(), source.classes, source.extra, half=True)
    val = evaluate_artifact(out, EvalConfig(split=Split.val, threads=args.threads), data_dir=data_config.data_dir)
    reporter.info(f"fp16 copy: validation {val.accuracy:.2%}; test with TTA next (7 forward passes an image)")
    test = evaluate_artifact(out, EvalConfig(split=Split.test, tta=Tta.flip_translate, threads=args.threads),
                             data_dir=data_config.data_dir, reporter=reporter)
    metrics = {"val_accuracy": val.accuracy, "test_accuracy": test.accuracy,
               **{f"test_accuracy_tta_{level.replace('-', '_')}": value for level, value in test.tta_accuracy.items()},
               "fp32_val_accuracy": source.extra["metrics"]["best_val_accuracy"],
               "fp32_test_accuracy": source.extra["metrics"]["test_accuracy"]}
    write_manifest(out, Manifest(
        kind="checkpoint", format="torch", precision="fp16 storage (fp32 compute)", parent=parent_ref(args.checkpoint),
        config=source_manifest.get("config", {}), seed=source_manifest.get("seed"), metrics=metrics,
        extra={"note": args.note or "the committed reference: weights rounded to fp16 for storage",
               "training_run": {"metrics": source_manifest.get("metrics"), "machine": source_manifest.get("machine"),
                                "versions": source_manifest.get("versions")},
               "data": data.describe(), "test_classes": test.classes, "test_confusion": test.confusion}))
    atomic_write_text(out.with_name(out.name + ".sha256"), f"{sha256_file(out)}  {out.name}\n")
    reporter.info(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): test {metrics['test_accuracy']:.2%} "
                  f"(fp32 {metrics['fp32_test_accuracy']:.2%}); with TTA flip {metrics['test_accuracy_tta_flip']:.2%}, "
                  f"flip-translate {metrics['test_accuracy_tta_flip_translate']:.2%}")


if __name__ == "__main__":
    main()
