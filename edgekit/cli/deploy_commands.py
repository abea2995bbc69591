"""Commands that ship and check a model: export, bench, and the look inside (diff, explain)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..config import BenchConfig, DataSource, DiagnoseOptions, ExportOptions, Split
from ..errors import EdgekitError
from ..formats import FORMATS as _FORMATS, export_targets as _export_targets
from .app import DataDirOption, ForceOption, app, data_config_from_options, fail, make_reporter, override_data


# Choices come from the format table, so a new target needs no change here.
ExportTarget = Enum("ExportTarget", {name: name for name in _export_targets()}, type=str)
ExportPrecision = Enum("ExportPrecision", {p: p for name in _export_targets() for p in _FORMATS[name].precisions},
                       type=str)


@app.command("export")
def export_command(
    artifact: Path = typer.Argument(..., help="an edgekit checkpoint (.pt) to export"),
    target: ExportTarget = typer.Option(..., "--target", help="the runtime format to write"),
    precision: ExportPrecision = typer.Option(ExportPrecision("fp32"), "--precision", help="as counted in the file afterwards"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="default: beside the checkpoint, e.g. best.fp16.onnx"),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="write a folder to copy to a device instead: the file, "
                                          "its manifest, labels.txt, the standalone runner script(s) and README.txt"),
    batch: int = typer.Option(ExportOptions.batch, "--batch", help="static batch dimension"),
    dynamic_batch: bool = typer.Option(ExportOptions.dynamic_batch, "--dynamic-batch", help="a batch axis of any size instead of --batch"),
    opset: int = typer.Option(ExportOptions.opset, "--opset", help="ONNX opset (17 or newer)"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="calibration definition (needed for int8), from `edgekit calibrate`"),
    parity_images: int = typer.Option(ExportOptions.parity_images, "--parity-images", help="seeded test images the export must agree on"),
    keep_failed: bool = typer.Option(ExportOptions.keep_failed, "--keep-failed", help="keep a file that fails the parity gate as *.failed.*"),
    debug_parity: bool = typer.Option(ExportOptions.debug_parity, "--debug-parity", help="compare every conv output with torch; report the first divergent layer"),
    int8_io: bool = typer.Option(ExportOptions.int8_io, "--int8-io", help="int8 input/output tensors (integer-only TFLite); runners still take floats"),
    threads: Optional[int] = typer.Option(None, help="runtime threads for the parity run"),
    seed: int = typer.Option(ExportOptions.seed, help="seed of the parity image choice"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data the checkpoint was trained on"),
    data_dir: Optional[Path] = DataDirOption,
    force: bool = ForceOption,
) -> None:
    """Export a checkpoint to ONNX / TensorRT / TFLite / SavedModel, refused unless it matches its source.

    The file carries its class names, input layout, shape and pixel scale (`edgekit info` shows them).

    Example: edgekit export artifacts/train/best.pt --target onnx --precision int8 --calibration calibration/cifar10.json

    Example: edgekit export artifacts/train/best.pt --target tflite --precision int8 --int8-io --calibration calibration/cifar10.json --bundle deploy/pi
    """
    from ..config import data_config_from_dict
    from ..export import export_artifact
    from ..qmodel import torch_artifact_spec

    options = ExportOptions(batch=batch, dynamic_batch=dynamic_batch, opset=opset,
                            calibration=str(calibration) if calibration else None, parity_images=parity_images,
                            keep_failed=keep_failed, debug_parity=debug_parity, int8_io=int8_io, threads=threads,
                            seed=seed)
    data = None
    if source is not None or data_dir is not None:
        data = data_config_from_dict(torch_artifact_spec(artifact)[1].get("data_config"))
        if source is not None:
            data.source = source
        if data_dir is not None:
            data.data_dir = str(data_dir)
    if bundle is not None:
        from ..bundle import export_bundle
        from ..errors import ConfigError

        if out is not None:
            raise ConfigError("--out and --bundle exclude each other", "pass one of them")
        typer.echo(str(export_bundle(artifact, target.value, precision.value, bundle, options, make_reporter(),
                                     data_config=data).path))
        return
    result = export_artifact(artifact, target.value, precision.value, out, options, make_reporter(), data_config=data,
                             force=force)
    typer.echo(str(result.path))


@app.command()
def bench(
    artifacts: Optional[list[Path]] = typer.Argument(None, help="artifact files (checkpoints, .onnx, .tflite, ...)"),
    directory: Optional[Path] = typer.Option(None, "--dir", help="also bench every artifact (file with a manifest) under this folder"),
    threads: int = typer.Option(BenchConfig.threads, help="threads for every runtime (pinned and recorded)"),
    batches: str = typer.Option("1,8,32,128", help="throughput sweep batch sizes, comma-separated"),
    warmup: int = typer.Option(BenchConfig.warmup, help="untimed batch-1 calls before timing"),
    runs: int = typer.Option(BenchConfig.runs, help="at least this many timed batch-1 calls"),
    min_seconds: float = typer.Option(BenchConfig.min_seconds, help="and at least this many seconds of them"),
    latency_rounds: int = typer.Option(BenchConfig.latency_rounds, help="batch-1 timing in this many alternating rounds over all rows (1: each row alone, after its accuracy)"),
    sweep_seconds: float = typer.Option(BenchConfig.sweep_seconds, help="seconds per batch size in the throughput sweep"),
    test_limit: Optional[int] = typer.Option(None, help="accuracy on the first N test images only (quick runs)"),
    out: Optional[Path] = typer.Option(None, help="result path without suffix (default benchmarks/results/bench-<time>)"),
    baselines: bool = typer.Option(BenchConfig.baselines, "--baselines", help="also make and bench stock ORT quantize_static and TFLite int8"),
    baseline_dir: Path = typer.Option(Path(BenchConfig.baseline_dir), help="where --baselines writes its files"),
    calibration: Optional[Path] = typer.Option(None, help="calibration definition for --baselines (default: the lineage's)"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data each lineage was trained on"),
    data_dir: Optional[Path] = DataDirOption,
    compare: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", help="print per-row deltas B - A of two bench .json files"),
    render: Optional[Path] = typer.Option(None, "--render", help="re-write the .md, .csv and .png of a bench .json (after a report change); measures nothing"),
    diff: bool = typer.Option(BenchConfig.diff, "--diff", help="per row: images flipped against the fp32 root and the class that flipped most"),
) -> None:
    """Accuracy, batch-1 latency (p50/p90/p99, mean with 95% CI), throughput, size and parity of every artifact.

    Example: edgekit bench --dir artifacts/ --threads 2 --out benchmarks/results/bench-cpu
    """
    import datetime

    from ..bench import bench as run_bench, compare as compare_runs
    from ..errors import ConfigError

    reporter = make_reporter()
    if compare:
        compare_runs(compare[0], compare[1], reporter)
        return
    if render is not None:
        from ..bench import render as render_run

        reporter.info("bench: rewrote " + ", ".join(str(p) for p in render_run(render).values()))
        return
    try:
        sweep = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batches must be comma-separated integers, got '{batches}'", "use e.g. --batches 1,8,32,128") from None
    data = None
    if source is not None:
        data = data_config_from_options(source, data_dir)
    config = BenchConfig(threads=threads, batches=sweep, warmup=warmup, runs=runs, min_seconds=min_seconds,
                         latency_rounds=latency_rounds, sweep_seconds=sweep_seconds, test_limit=test_limit, baselines=baselines,
                         baseline_dir=str(baseline_dir), calibration=str(calibration) if calibration else None, data=data,
                         diff=diff)
    if out is None:
        out = Path("benchmarks/results") / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    result = run_bench(artifacts or [], config, reporter, directory=directory, out=out)
    if not any(row.status == "ok" for row in result.rows):
        # the first reasons, so a bench of one bad file says what is wrong with it in the one line
        reasons = "; ".join(f"{row.artifact}: {row.why}" for row in result.rows[:2])
        fail(EdgekitError(f"no row of the bench ran ({' '.join(reasons.split())})", f"see the notes in {out}.md"))


# ---- look inside: diff and explain (edgekit/diagnose.py) ----


@app.command("diff")
def diff_command(
    parent: Path = typer.Argument(..., help="the reference artifact (any runnable format)"),
    child: Path = typer.Argument(..., help="the artifact made from it (pruned, int8, exported, ...)"),
    split: Split = typer.Option(Split.test),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default artifacts/diff/<parent>-vs-<child>)"),
    limit: Optional[int] = typer.Option(None, help="only the first N images of the split (quick runs)"),
    gradcam_sample: int = typer.Option(DiagnoseOptions.gradcam_sample, help="seeded images on which the Grad-CAM maps are compared"),
    layer: Optional[str] = typer.Option(None, help="Grad-CAM layer (default the last conv stage, layer4)"),
    threads: Optional[int] = typer.Option(None, help="runtime threads"),
    seed: int = typer.Option(DiagnoseOptions.seed, help="seed of the Grad-CAM sample"),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data the parent's lineage was trained on"),
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """Image by image, what changed from PARENT to CHILD: flips, McNemar test, per-class accuracy, Grad-CAM.

    Example: edgekit diff artifacts/train/best.pt artifacts/int8.pt --out artifacts/diff/int8
    """
    from ..diagnose import diff

    out = out or Path("artifacts/diff") / f"{parent.stem}-vs-{child.stem}"
    diff(parent, child, out, split=split.value, data=override_data(source, data_dir), limit=limit, threads=threads,
         seed=seed, gradcam_sample=gradcam_sample, layer=layer, reporter=make_reporter())
    typer.echo(str(out))


@app.command()
def explain(
    checkpoint: Path = typer.Argument(..., help="a torch checkpoint: fp32, pruned, or static/QAT int8 .pt"),
    images: int = typer.Option(DiagnoseOptions.images, "--images", help="seeded random images to draw Grad-CAM for"),
    index: Optional[str] = typer.Option(None, "--index", help="these image indices instead, comma-separated"),
    layer: Optional[str] = typer.Option(None, help="module to take Grad-CAM at (default layer4, the last conv stage)"),
    split: Split = typer.Option(Split.test),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default artifacts/explain/<checkpoint>)"),
    limit: Optional[int] = typer.Option(None, help="only the first N images of the split"),
    seed: int = typer.Option(DiagnoseOptions.seed),
    source: Optional[DataSource] = typer.Option(None, "--source", help="default: the data it was trained on"),
    data_dir: Optional[Path] = DataDirOption,
) -> None:
    """Grad-CAM overlays and the most confident mistakes of one model.

    Example: edgekit explain artifacts/train/best.pt --images 16 --layer layer3
    """
    from ..diagnose import explain as run_explain
    from ..errors import ConfigError

    indices = None
    if index:
        try:
            indices = [int(i) for i in index.split(",") if i.strip()]
        except ValueError:
            raise ConfigError(f"--index must be comma-separated integers, got '{index}'", "e.g. --index 3,17,42") from None
    out = out or Path("artifacts/explain") / checkpoint.stem
    run_explain(checkpoint, out, images_count=images, indices=indices, layer=layer, split=split.value,
                data=override_data(source, data_dir), limit=limit, seed=seed, reporter=make_reporter())
    typer.echo(str(out))
