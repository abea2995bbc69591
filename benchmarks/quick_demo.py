"""How long the README's first command takes here: `edgekit pipeline --quick`, stage by stage.

    .venv/bin/python benchmarks/quick_demo.py [--arch mobilenet_v2]

Runs the quick pipeline as a user would (the installed `edgekit` command, a fresh output folder,
so no stage is skipped) and reads each stage's wall time from the pipeline.json it writes. The
install's time is given with --install-seconds when it was measured on a fresh clone (the pip
line of the README), since this script runs after it. Writes
benchmarks/results/quick-demo-cpu-<avx512-bf16|avx2>[-<arch>].{json,md} with the machine, its CPU flags and
the load it ran under: the issue's targets are 2 minutes on an AVX-512 CPU, 5 on an AVX2-only one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _repo import machine_kind  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, cpu_flags, library_versions, machine_info
from edgekit.bench.measure import load_average
from edgekit.config import Arch
from edgekit.report import markdown_table

RESULTS = Path(__file__).parent / "results"
TARGET_SECONDS = {"avx512-bf16": 120, "avx2": 300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install-seconds", type=float, default=None,
                        help="the README's pip line on a fresh clone, timed by hand (recorded as given)")
    parser.add_argument("--arch", choices=[a.value for a in Arch], default=Arch.resnet18.value,
                        help="the network the quick pipeline trains (resnet18 is the README's first command)")
    args = parser.parse_args()

    edgekit = Path(sys.executable).with_name("edgekit")
    out = Path(tempfile.mkdtemp(prefix="edgekit-quick-"))
    arch_option = [] if args.arch == Arch.resnet18.value else ["--arch", args.arch]
    command = [str(edgekit), "pipeline", "--quick", *arch_option, "--out", str(out)]
    load_before = load_average()
    began = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    stages = json.loads((out / "pipeline.json").read_text())
    shutil.rmtree(out, ignore_errors=True)

    kind = machine_kind()
    target = TARGET_SECONDS[kind]
    result = {
        "command": " ".join(["edgekit pipeline --quick", *arch_option, "--out <fresh folder>"]),
        "machine": machine_info(), "cpu_flags": cpu_flags(), "versions": library_versions(),
        "load_average_before": load_before, "load_average_end": load_average(),
        "wall_seconds": round(wall, 1), "install_seconds": args.install_seconds,
        "target_seconds": target, "meets_target": wall <= target,
        "stages": [{"stage": s["stage"], "artifact": Path(s["artifact"]).name if s["artifact"] else "",
                    "status": s["status"], "seconds": round(s["seconds"], 1)} for s in stages],
    }
    name = f"quick-demo-cpu-{kind}" + ("" if not arch_option else f"-{args.arch}")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")

    by_kind: dict[str, float] = {}
    for stage in stages:  # exports and quantize steps grouped, so the table says where time goes
        group = stage["stage"].split()[0]
        by_kind[group] = by_kind.get(group, 0.0) + stage["seconds"]
    lines = [
        f"# The quick demo on this machine: {wall:.0f} s (target {target} s: "
        f"{'met' if wall <= target else 'missed'})", "",
        f"`{result['command']}`, run by `benchmarks/quick_demo.py`. Machine: {result['machine']}; "
        f"load average before {load_before}, after {result['load_average_end']}.",
        "" if args.install_seconds is None else
        f"\nInstall (the README's pip line on a fresh clone): {args.install_seconds:.0f} s.\n",
        "## Time by stage kind", "",
        markdown_table(["stage", "seconds", "share"],
                       [[k, f"{v:.1f}", f"{v / wall:.0%}"] for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])]),
        "", "## Every stage", "",
        markdown_table(["stage", "artifact", "status", "seconds"],
                       [[s["stage"], s["artifact"], s["status"].split(":")[0], f"{s['seconds']:.1f}"]
                        for s in result["stages"]]),
        "",
        *sorted({f"- {s['status']}" for s in result["stages"] if ":" in s["status"]}),
        "",
        "Stage times do not add up to the wall time: starting Python and importing torch and TensorFlow "
        "come before the first stage.",
    ]
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print(f"quick demo: {wall:.0f} s on {kind} (target {target} s); benchmarks/results/{name}.md")


if __name__ == "__main__":
    main()
