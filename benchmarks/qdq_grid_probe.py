"""How an x86 int8 model's 7-bit activations are written into QDQ ONNX, and what ONNX Runtime makes of it.

    .venv/bin/python benchmarks/qdq_grid_probe.py --data-dir /tmp/cifar10-jpg

Static PTQ (minmax, the committed 512-image calibration set) of the committed width-0.5 reference
on torch's x86 engine, then its QDQ ONNX written two ways: "stretched" (the same real range over
0..255, a twice finer grid: edgekit's choice until 2026-12-03) and "torch grid" (torch's own scale
and zero point over 0..255: today's). Each file runs in ONNX Runtime on the test split beside the
torch int8 model and its fake-quant twin (the same integers in float). On a CPU without VNNI the
stretched file's codes above 127 saturate ONNX Runtime's u8 x s8 kernels.
Writes benchmarks/results/qdq-grid-probe.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from _repo import ROOT, repo_path, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, cpu_flags, library_versions, machine_info
from edgekit.bench.measure import load_average
from edgekit.config import CalibMethod, DataConfig, DataSource, QuantizeConfig, QuantMode
from edgekit.data import load_data, to_unit_float
from edgekit.formats import onnx as onnx_format
from edgekit.model import ModelSpec
from edgekit.qmodel import int8_as_fake_quant, load_quantized
from edgekit.quantize import quantize_checkpoint
from edgekit.report import markdown_table
from edgekit.timing import predict_batched

RESULTS = ROOT / "benchmarks/results"
REFERENCE = ROOT / "benchmarks/models/resnet18-w0.5-cpu.fp16.pt"


def stretched(module):
    """The earlier writer: a reduced activation range stretched over 0..255 at the same real range."""
    from torch.ao.quantization import FakeQuantizeBase

    for fq in [m for m in module.modules() if isinstance(m, FakeQuantizeBase)]:
        if int(fq.quant_min) == 0 and int(fq.quant_max) == 127:
            fq.scale.div_(255 / 127)
            fq.zero_point.copy_(torch.round(fq.zero_point.double() * 255 / 127).to(fq.zero_point.dtype))
            fq.quant_max = 255
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts/qdq-grid-probe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data_config = DataConfig(source=DataSource.folder, data_dir=args.data_dir)
    int8 = args.work / "static-minmax.int8.pt"
    if not int8.exists():
        quantize_checkpoint(REFERENCE, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax,
                                                      calibration="calibration/cifar10-jpg-512.json",
                                                      export_onnx=False, latency_runs=1), int8,
                            data_config=data_config)
    data = load_data(data_config)
    images, labels = to_unit_float(data.test_x).numpy(), data.test_y.numpy()
    qmodel, payload = load_quantized(int8)
    twin = int8_as_fake_quant(qmodel, ModelSpec.from_dict(payload["spec"]), payload["recipe"])

    def torch_logits(model):
        with torch.inference_mode():
            return predict_batched(lambda b: model(torch.from_numpy(b)).numpy(), images, 250)

    logits = {"torch int8 (x86 kernels)": torch_logits(qmodel), "fake-quant twin": torch_logits(twin)}
    torch_grid = onnx_format.export_qdq_onnx(int8, args.work / "torch-grid.onnx")
    stretched_path = args.work / "stretched.onnx"
    onnx_format.export_module(stretched(int8_as_fake_quant(qmodel, ModelSpec.from_dict(payload["spec"]),
                                                           payload["recipe"])), stretched_path)
    for label, path in (("ONNX Runtime, torch grid (today)", torch_grid), ("ONNX Runtime, stretched (before)", stretched_path)):
        logits[label] = predict_batched(onnx_format.load_runner(path, args.threads).predict, images, 250)
    reference = logits["torch int8 (x86 kernels)"].argmax(1)
    rows = [{"model": k, "test_accuracy": float((v.argmax(1) == labels).mean()),
             "agreement_with_torch_int8": float((v.argmax(1) == reference).mean())} for k, v in logits.items()]
    result = {"command": script_command(),
              "source": repo_path(REFERENCE), "calibration": "calibration/cifar10-jpg-512.json (minmax)",
              "test_images": int(len(labels)), "machine": machine_info(), "cpu_flags": cpu_flags(),
              "load_average_end": load_average(), "versions": library_versions(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "qdq-grid-probe.json", json.dumps(result, indent=2) + "\n")
    table = markdown_table(["model", "test accuracy (%)", "agreement with torch int8 (%)"],
                           [[r["model"], round(100 * r["test_accuracy"], 2), round(100 * r["agreement_with_torch_int8"], 2)]
                            for r in rows])
    atomic_write_text(RESULTS / "qdq-grid-probe.md",
                      f"# QDQ ONNX of an x86 int8 model: torch's grid vs a stretched grid\n\n"
                      f"Static PTQ (minmax) of `{REFERENCE.name}`, {len(labels):,} test images. Machine: "
                      f"{result['machine'].get('processor')}, {result['machine'].get('cpu_count')} cores, CPU flags "
                      f"of interest: {' '.join(result['cpu_flags']) or 'none'} (no VNNI here means ONNX Runtime's "
                      f"u8 x s8 kernels can saturate on codes above 127). Load average at the end "
                      f"{result['load_average_end']}.\n\n{table}\n\nReproduce: `{result['command']}`\n")
    print(table)


if __name__ == "__main__":
    main()
