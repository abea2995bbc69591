"""The whole chain in one call: train -> evaluate (-> later stages as they land).

A stage whose output exists with the same config hash is skipped, so an interrupted pipeline
resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import read_manifest
from .config import DataConfig, TrainConfig
from .data import load_data
from .errors import EdgekitError
from .model import ModelSpec, build_model, load_checkpoint
from .report import Reporter, quiet
from .train import evaluate, train_model


@dataclass
class PipelineResult:
    out_dir: Path
    checkpoint: Path
    stages: list[dict[str, Any]] = field(default_factory=list)


def run_pipeline(data_config: DataConfig, train_config: TrainConfig, out_dir: Path,
                 reporter: Reporter = quiet) -> PipelineResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(data_config, reporter)
    reporter.info(f"data: {data.source}: {len(data.train_y)} train, {len(data.val_y)} val, {len(data.test_y)} test")
    train_dir = out_dir / "train"
    checkpoint = train_dir / "best.pt"
    config_hash = train_config.config_hash(data_config)
    stages: list[dict[str, Any]] = []
    if checkpoint.exists() and _recorded_hash(checkpoint) == config_hash:
        reporter.info(f"train: {checkpoint} exists with the same config ({config_hash}), skipped")
        stages.append({"stage": "train", "status": "skipped (same config)", "artifact": str(checkpoint)})
    else:
        spec = ModelSpec.from_width(train_config.width, data.num_classes)
        result = train_model(build_model(spec), data, train_config, train_dir, reporter, data_config=data_config)
        stages.append({"stage": "train", "status": "done", "artifact": str(result.checkpoint),
                       "test_accuracy": result.test_accuracy})
    model = load_checkpoint(checkpoint).build()
    test = evaluate(model, data.test_x, data.test_y)
    stages.append({"stage": "eval", "status": "done", "artifact": str(checkpoint), "test_accuracy": test["accuracy"]})
    (out_dir / "pipeline.json").write_text(json.dumps({"stages": stages}, indent=2) + "\n")
    reporter.table("pipeline", ["stage", "status", "artifact", "test accuracy"],
                   [[s["stage"], s["status"], s["artifact"], f"{s['test_accuracy']:.2%}" if "test_accuracy" in s else ""]
                    for s in stages])
    return PipelineResult(out_dir, checkpoint, stages)


def _recorded_hash(artifact: Path) -> str | None:
    try:
        return read_manifest(artifact).get("extra", {}).get("config_hash")
    except EdgekitError:
        return None
