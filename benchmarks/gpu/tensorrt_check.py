#!/usr/bin/env python3
"""TensorRT first-contact check: build, gate, census and time fp16 and int8 engines on this GPU.

No machine edgekit was developed on has TensorRT or a GPU, so this script is what a user with
one runs to find out whether the TensorRT target works there. It uses edgekit's own export path
(the same code as `edgekit export --target tensorrt`), so what it reports is what the CLI does:

    pip install -e ".[onnx,tensorrt-cu12]"        # or tensorrt-cu13 on driver 580+
    python benchmarks/gpu/tensorrt_check.py                      # the committed width-0.5 reference (CIFAR-10)
    python benchmarks/gpu/tensorrt_check.py --synthetic          # no download: a tiny model on synthetic data
    python benchmarks/gpu/tensorrt_check.py --source best.pt     # your checkpoint or int8 artifact

For each precision (fp32, fp16, int8 by default) it prints one line: built or why not, the
parity gate's verdict against the source (top-1 agreement, max |logit error|, accuracy source /
engine), the engine census (layers by output dtype, weights by dtype, as TensorRT's inspector
reports them), and the median latency at batch 1 and the engine's tuned batch. It writes the
same as JSON (`--out`, default tensorrt-check/summary.json). Exit status: 0 when every requested
engine was built and kept by the gate, 1 when one failed, 2 when TensorRT or a GPU is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "benchmarks" / "models" / "resnet18-w0.5-cpu.fp16.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="checkpoint or int8 artifact (default: the reference)")
    parser.add_argument("--synthetic", action="store_true", help="train a width-0.125 model on synthetic data first")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--calibration-size", type=int, default=512)
    parser.add_argument("--parity-images", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per batch size")
    parser.add_argument("--out", type=Path, default=Path("tensorrt-check"))
    return parser.parse_args()


def synthetic_source(out: Path) -> tuple[Path, object]:
    from edgekit.config import DataConfig, DataSource, TrainConfig
    from edgekit.data import load_data
    from edgekit.model import ModelSpec, build_model
    from edgekit.train import train_model

    config = DataConfig(source=DataSource.synthetic, synthetic_train=4000, synthetic_test=1000, val_size=500,
                        cache_dir=str(out / "cache"))
    data = load_data(config)
    model = build_model(ModelSpec.from_width(0.125, data.num_classes), seed=0)
    result = train_model(model, data, TrainConfig(epochs=4, batch_size=128, lr=0.1, width=0.125, warmup_epochs=0.5,
                                                  cutout=0), out / "train", data_config=config)
    return Path(result.checkpoint), config


def median_ms(runner, batch: np.ndarray, runs: int) -> float:
    for _ in range(10):
        runner.predict(batch)  # warm-up: lazy allocations, clocks
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.predict(batch)  # host -> device -> host included: what a caller of the runner pays
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> int:
    args = parse_args()
    from edgekit.config import ExportOptions
    from edgekit.errors import EdgekitError
    from edgekit.formats import tensorrt as trt_format

    reason = trt_format.unavailable_reason()
    if reason:
        print(f"TensorRT is not usable here: {reason}")
        return 2
    record = trt_format.device_record()
    print(f"TensorRT {record['tensorrt']} on {record['gpu']} (compute capability {record['compute_capability']}), "
          f"Python {platform.python_version()}")
    args.out.mkdir(parents=True, exist_ok=True)

    from edgekit.calibrate import make_calibration, save_calibration
    from edgekit.config import data_config_from_dict
    from edgekit.data import load_data_for_checkpoint
    from edgekit.export import export_artifact

    data_config = None
    if args.synthetic:
        source, data_config = synthetic_source(args.out)
    else:
        source = args.source or REFERENCE
    # the calibration set is drawn from the data the source was trained on (recorded in it)
    float_source = _float_checkpoint(source)
    data_config = data_config or data_config_from_dict(float_source.extra.get("data_config"))
    data = load_data_for_checkpoint(float_source, data_config)
    calibration = save_calibration(make_calibration(data, data_config, size=args.calibration_size),
                                   args.out / "calibration.json")

    rows, failed = [], False
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        engine = args.out / f"model.{precision}.engine"
        options = ExportOptions(dynamic_batch=True, calibration=str(calibration), parity_images=args.parity_images)
        row = {"precision": precision, "engine": str(engine)}
        try:
            result = export_artifact(source, "tensorrt", precision, engine, options, data_config=data_config)
        except EdgekitError as exc:
            row["error"] = str(exc)
            failed = True
            print(f"{precision:5s} FAILED: {exc}")
            rows.append(row)
            continue
        runner = trt_format.load_runner(engine)
        images = np.random.default_rng(0).random((trt_format.DYNAMIC_OPT_BATCH, 3, 32, 32), dtype=np.float32)
        row.update({
            "label": result.precision,
            "top1_agreement": result.parity.top1_agreement, "max_abs_logit_error": result.parity.max_abs,
            "accuracy_source": result.parity.source_accuracy, "accuracy_engine": result.parity.exported_accuracy,
            "layers_by_output_dtype": result.census.get("layers_by_output_dtype"),
            "weights_by_dtype": result.census.get("weights_by_dtype"),
            "median_ms_batch1": median_ms(runner, images[:1], args.runs),
            f"median_ms_batch{trt_format.DYNAMIC_OPT_BATCH}": median_ms(runner, images, max(20, args.runs // 10)),
            "size_bytes": result.manifest.size_bytes,
        })
        rows.append(row)
        print(f"{precision:5s} kept as {row['label']}: agreement {row['top1_agreement']:.2%}, "
              f"max|err| {row['max_abs_logit_error']:.3g}, accuracy {row['accuracy_source']:.2%} -> "
              f"{row['accuracy_engine']:.2%}; layers {row['layers_by_output_dtype']}; weights {row['weights_by_dtype']}; "
              f"{row['median_ms_batch1']:.3f} ms @1, "
              f"{row[f'median_ms_batch{trt_format.DYNAMIC_OPT_BATCH}']:.3f} ms @{trt_format.DYNAMIC_OPT_BATCH}")
    summary = {"device": record, "source": str(source), "rows": rows,
               "note": "latency: median wall time of TensorRTRunner.predict, host copies included"}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary: {args.out / 'summary.json'}")
    return 1 if failed else 0


def _float_checkpoint(source: Path):
    from edgekit.model import load_checkpoint
    from edgekit.qmodel import dequantized_checkpoint, is_quantized_artifact

    return dequantized_checkpoint(source) if is_quantized_artifact(source) else load_checkpoint(source)


if __name__ == "__main__":
    sys.exit(main())
