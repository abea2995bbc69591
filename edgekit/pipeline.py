"""The whole chain in one call: train -> calibrate -> prune -> quantize -> export -> bench.

Each stage's key is a hash of its config and its parent's bytes; a stage whose artifact exists
under the same key (recorded in `pipeline-state.json`) is skipped, so an interrupted pipeline
resumes where it stopped and a changed option reruns only what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .artifacts import atomic_write_text, sha256_file, to_plain
from .config import (BenchConfig, CalibMethod, CalibrationConfig, DataConfig, ExportOptions, PruneConfig,
                     QuantizeConfig, QuantMode, TrainConfig)
from .errors import EdgekitError
from .formats import FORMATS
from .report import Reporter, quiet


@dataclass
class PipelineConfig:
    data: DataConfig
    train: TrainConfig
    prune: PruneConfig = field(default_factory=PruneConfig)
    calibration_size: int = CalibrationConfig.size
    static_method: CalibMethod = CalibMethod.auto
    qat_epochs: int = 2
    bench: BenchConfig = field(default_factory=BenchConfig)


def quick_pipeline_config() -> PipelineConfig:
    from .config import quick_profile

    data, train = quick_profile()
    return PipelineConfig(
        data=data, train=train,
        prune=PruneConfig(finetune_epochs=1, finetune_lr=0.01, batch_size=128),
        calibration_size=128, static_method=CalibMethod.minmax, qat_epochs=1,
        # A demo's bench shows the table, not a publishable figure: short timing windows keep the
        # ~30 rows at about half a second each (benchmarks/results/quick-demo-cpu-*.md has the stage times).
        bench=BenchConfig(batches=(1, 8), runs=10, min_seconds=0.1, sweep_seconds=0.1, warmup=5),
    )


@dataclass
class StageRecord:
    stage: str
    status: str  # done | skipped (same config) | refused: ... | unavailable: ...
    artifact: str = ""
    detail: str = ""
    seconds: float = 0.0  # wall time of the stage, skipped ones included (their check)


@dataclass
class PipelineResult:
    out_dir: Path
    checkpoint: Path
    stages: list[StageRecord] = field(default_factory=list)
    bench: Any = None


class _State:
    """Which artifact was made from which (config, parent) key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    @staticmethod
    def key(config: Any, parent: Path | None) -> str:
        payload = json.dumps({"config": to_plain(config), "parent": sha256_file(parent) if parent else None},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def fresh(self, artifact: Path, key: str) -> bool:
        return artifact.exists() and self.keys.get(str(artifact)) == key

    def record(self, artifact: Path, key: str) -> None:
        self.keys[str(artifact)] = key
        atomic_write_text(self.path, json.dumps(self.keys, indent=2) + "\n")


def run_pipeline(config: PipelineConfig, out_dir: Path, reporter: Reporter = quiet) -> PipelineResult:
    from .calibrate import make_calibration, save_calibration
    from .data import load_data
    from .export import export_artifact
    from .model import ModelSpec, build_model
    from .prune import prune_checkpoint
    from .quantize import quantize_checkpoint
    from .train import train_model

    config.train.validate()  # the CLI's --epochs/--width overrides land here unchecked
    config.data.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _State(out_dir / "pipeline-state.json")
    records: list[StageRecord] = []
    started = time.perf_counter()
    data = load_data(config.data, reporter)
    records.append(StageRecord("data", "done", detail=f"{data.source}: {len(data.train_y)} train, "
                               f"{len(data.val_y)} val, {len(data.test_y)} test",
                               seconds=time.perf_counter() - started))
    reporter.info(f"data: {records[-1].detail} ({records[-1].seconds:.1f} s)")

    def stage(name: str, artifact: Path, stage_config: Any, parent: Path | None, make: Callable[[], Any],
              tolerate: tuple[type[EdgekitError], ...] = ()) -> bool:
        began = time.perf_counter()
        key = _State.key({"stage": name, "config": stage_config}, parent)
        if state.fresh(artifact, key):
            reporter.info(f"{name}: {artifact} is up to date, skipped")
            records.append(StageRecord(name, "skipped (same config)", str(artifact),
                                       seconds=time.perf_counter() - began))
            return True
        reporter.info(f"{name}: started")
        try:
            detail = make()
        except tolerate as error:  # a refused or unavailable export is a result, not a crash
            records.append(StageRecord(name, f"{type(error).__name__}: {error.message}", str(artifact), error.hint,
                                       time.perf_counter() - began))
            reporter.info(f"{name}: {error.message} ({records[-1].seconds:.1f} s)")
            return False
        state.record(artifact, key)
        records.append(StageRecord(name, "done", str(artifact), detail or "", time.perf_counter() - began))
        reporter.info(f"{name}: done in {records[-1].seconds:.1f} s")
        return True

    checkpoint = out_dir / "train" / "best.pt"
    stage("train", checkpoint, {"train": config.train, "data": config.data}, None,
          lambda: f"test {train_model(build_model(ModelSpec.from_width(config.train.width, data.num_classes, arch=config.train.arch), config.train.seed), data, config.train, checkpoint.parent, reporter, data_config=config.data, force=True).test_accuracy:.2%}")

    calibration = out_dir / "calibration.json"
    stage("calibrate", calibration, {"size": config.calibration_size, "data": config.data}, None,
          lambda: save_calibration(make_calibration(data, config.data, config.calibration_size), calibration) and "")

    pruned = out_dir / "prune" / "pruned.pt"
    stage("prune", pruned, config.prune, checkpoint,
          lambda: _describe_prune(prune_checkpoint(checkpoint, config.prune, pruned, reporter, config.data, data)))

    quantized: list[Path] = []
    for name, source, quant_config in (
        ("quantize static", checkpoint, QuantizeConfig(mode=QuantMode.static, method=config.static_method,
                                                       calibration=str(calibration))),
        ("quantize qat (pruned)", pruned, QuantizeConfig(mode=QuantMode.qat, method=config.static_method,
                                                         calibration=str(calibration), qat_epochs=config.qat_epochs)),
    ):
        artifact = out_dir / "quantize" / f"{source.stem}.{quant_config.mode.value}.int8.pt"
        if stage(name, artifact, quant_config, source,
                 lambda: _describe_quant(quantize_checkpoint(source, quant_config, artifact, reporter, config.data, data))):
            quantized.append(artifact)

    options = ExportOptions(calibration=str(calibration))
    # float models to every precision; int8 children to int8 only (their float form is the parent)
    sources = [(checkpoint, None), (pruned, None)] + [(path, ("int8",)) for path in quantized]
    for source, only in sources:
        for target, fmt in FORMATS.items():
            if not fmt.exportable:
                continue
            for precision in (p for p in fmt.precisions if only is None or p in only):
                stem = source.stem if source.stem.endswith(f".{precision}") else f"{source.stem}.{precision}"
                artifact = out_dir / "export" / f"{stem}{fmt.suffix}"
                stage(f"export {target} {precision}", artifact, {"options": options, "target": target,
                                                                 "precision": precision}, source,
                      lambda: _describe_export(export_artifact(source, target, precision, artifact,
                                                               replace(options), reporter, config.data)),
                      tolerate=(EdgekitError,))

    from .bench import bench

    bench_out = out_dir / "bench" / "bench"
    began = time.perf_counter()
    reporter.info("bench: started")
    run = bench([], config.bench, reporter, directory=out_dir, out=bench_out)
    records.append(StageRecord("bench", "done", str(bench_out) + ".md", f"{len(run.rows)} rows",
                               time.perf_counter() - began))
    reporter.info(f"bench: done in {records[-1].seconds:.1f} s")

    atomic_write_text(out_dir / "pipeline.json", json.dumps([to_plain(r) for r in records], indent=2) + "\n")
    reporter.table("pipeline", ["stage", "status", "s", "artifact", "detail"],
                   [[r.stage, r.status, f"{r.seconds:.1f}", r.artifact, r.detail] for r in records])
    reporter.info(f"pipeline: {len(records)} stages in {time.perf_counter() - started:.0f} s")
    return PipelineResult(out_dir, checkpoint, records, run)


def _describe_prune(result: Any) -> str:
    before, after = result.before, result.after
    return (f"MACs {before['macs']:,} -> {after['macs']:,}; val {before.get('val_accuracy', 0):.2%} -> "
            f"{after.get('val_accuracy', 0):.2%}")


def _describe_quant(result: Any) -> str:
    metrics = result.metrics
    return ", ".join(f"{k} {v:.2%}" for k, v in metrics.items() if k.endswith("accuracy") and isinstance(v, float))


def _describe_export(result: Any) -> str:
    return f"{result.precision}; top-1 agreement {result.parity.top1_agreement:.2%}"
