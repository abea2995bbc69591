"""Train with the given settings and commit-ready results: benchmarks/results/<name>.{json,md}.

    python benchmarks/train_run.py --name train-cpu-width0.25 --data-dir data/cifar10-jpg \
        --width 0.25 --epochs 12 --batch-size 256 --lr 0.1 --train-per-class 2500 --threads 1

or summarise a run that `edgekit train` already made, with the figures of the reference published
from it (benchmarks/publish_reference.py: the fp16 copy's accuracy, plain and with TTA, and its
test confusion matrix):

    python benchmarks/train_run.py --name train-cpu-width1 --from-run artifacts/ref-w1 \
        --reference benchmarks/models/resnet18-w1-cpu.fp16.pt

Run it on the machine that trained (it records this machine's CPU flags beside the run's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from edgekit.artifacts import atomic_write_text, cpu_flags, library_versions, machine_info, read_manifest
from edgekit.config import Arch, DataConfig, DataSource, TrainConfig
from edgekit.report import RichReporter, markdown_table

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--from-run", type=Path, help="summarise this finished `edgekit train --out` folder")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("artifacts/train-bench"))
    parser.add_argument("--arch", choices=[a.value for a in Arch], default=Arch.resnet18.value)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--train-per-class", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--reference", type=Path, help="the fp16 reference published from this run, for its TTA figures")
    parser.add_argument("--note", default="", help="what else ran on the machine, or anything a reader should know")
    args = parser.parse_args()

    run_dir = args.from_run
    if run_dir is None:
        from edgekit.data import load_data
        from edgekit.model import ModelSpec, build_model
        from edgekit.train import train_model

        data_config = DataConfig(source=DataSource.folder if args.data_dir else DataSource.cifar10,
                                 data_dir=str(args.data_dir) if args.data_dir else None,
                                 train_per_class=args.train_per_class)
        config = TrainConfig(arch=Arch(args.arch), width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, threads=args.threads)
        reporter = RichReporter()
        data = load_data(data_config, reporter)
        model = build_model(ModelSpec.from_width(args.width, data.num_classes, arch=args.arch), seed=0)
        train_model(model, data, config, args.out, reporter, data_config=data_config)
        run_dir = args.out
    write_results(args.name, run_dir, args.note, args.reference)


ARCH_NAMES = {Arch.resnet18.value: "ResNet18", Arch.mobilenet_v2.value: "MobileNetV2 (CIFAR form)"}
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _reference_figures(reference: Path | None) -> dict:
    if reference is None:
        return {}
    manifest = read_manifest(reference)
    extra = manifest.get("extra") or {}
    return {"file": str(reference), "sha256": manifest["sha256"], "size_bytes": manifest.get("size_bytes"),
            "metrics": manifest.get("metrics"), "test_classes": extra.get("test_classes"),
            "test_confusion": extra.get("test_confusion")}


def write_results(name: str, run_dir: Path, note: str = "", reference: Path | None = None) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = read_manifest(run_dir / "best.pt")
    history, summary, config, data = metrics["history"], metrics["metrics"], metrics["config"], metrics["data"]
    speeds = [h["images_per_second"] for h in history]
    result = {
        "name": name, "summary": summary, "config": config, "data": data, "history": history,
        "images_per_second_median": round(statistics.median(speeds), 1) if speeds else None,
        "checkpoint_sha256": manifest["sha256"], "machine": manifest.get("machine", machine_info()),
        "cpu_simd_flags": [flag for flag in SIMD_FLAGS if flag in cpu_flags()],
        "versions": manifest.get("versions", library_versions()), "command": manifest.get("command"),
        "reference": _reference_figures(reference),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    machine = result["machine"]
    rows = [[h["epoch"], round(h["train_loss"], 3), f"{h['val_accuracy']:.2%}", f"{h['test_accuracy']:.2%}",
             round(h["images_per_second"]), round(h["elapsed_seconds"])] for h in history]
    text = (
        f"# {name}\n\n"
        f"A real training run of the edgekit recipe on `{machine.get('processor')}` "
        f"({machine.get('cpu_count')} cores, torch threads {config.get('threads')}, no GPU).\n\n"
        f"- model: {ARCH_NAMES[config.get('arch', Arch.resnet18.value)]}, width {config['width']}; "
        f"epochs {config['epochs']}, batch {config['batch_size']}, "
        f"peak lr {config['lr']}, {config['optimizer']} / {config['schedule']}, label smoothing {config['label_smoothing']}\n"
        f"- arithmetic: {'bf16 autocast on the CPU (--cpu-bf16)' if config.get('cpu_bf16') else 'fp32'}\n"
        f"- data: {data['source']}; {data['train']} train images"
        f"{' (a per-class subset)' if ((manifest.get('config') or {}).get('data') or {}).get('train_per_class') else ''}, "
        f"{data['val']} validation, "
        f"{data['test']} test (the JPEG test split)\n"
        f"- **test accuracy (best-by-validation weights): {summary['test_accuracy']:.2%}** "
        f"(best validation {summary['best_val_accuracy']:.2%} at epoch {summary['best_epoch']})\n"
        f"- wall time {summary['wall_seconds']:.0f} s (training + per-epoch evaluation); median "
        f"{result['images_per_second_median']} training images/s\n"
        f"- CPU SIMD flags: {', '.join(result['cpu_simd_flags']) or 'none of ' + ', '.join(SIMD_FLAGS)}\n"
        f"- command: `{result['command']}`\n"
        + _reference_text(result["reference"]) + "\n"
        + (f"{note}\n\n" if note else "")
        + markdown_table(["epoch", "train loss", "val", "test", "images/s", "elapsed s"], rows)
    )
    if result["reference"].get("test_confusion"):
        classes = result["reference"]["test_classes"]
        text += ("\nTest confusion of the reference (rows: true class, columns: predicted):\n\n"
                 + markdown_table(["true \\ predicted", *classes],
                                  [[c, *row] for c, row in zip(classes, result["reference"]["test_confusion"])]))
    for picture, caption in (("curves", "training curves"), ("confusion", "confusion matrix (test split)")):
        if (run_dir / f"{picture}.png").exists():
            shutil.copyfile(run_dir / f"{picture}.png", RESULTS / f"{name}-{picture}.png")
            text += f"\n![{caption}]({name}-{picture}.png)\n"
    atomic_write_text(RESULTS / f"{name}.md", text)
    print(f"wrote {RESULTS / name}.json and .md")


def _reference_text(reference: dict) -> str:
    if not reference:
        return ""
    m = reference["metrics"]
    return (f"- published as `{reference['file']}` (fp16 storage, {reference['size_bytes'] / 1e6:.1f} MB): "
            f"validation {m['val_accuracy']:.2%}, **test {m['test_accuracy']:.2%}** plain; with test-time "
            f"augmentation {m['test_accuracy_tta_flip']:.2%} (flip, 2 passes an image) and "
            f"{m['test_accuracy_tta_flip_translate']:.2%} (flip + 1-px translate, 6 passes), measured by "
            "`edgekit eval --tta`. TTA is the model's reach, not a deployment figure; every later stage reports "
            "plain accuracy.\n")


if __name__ == "__main__":
    main()
