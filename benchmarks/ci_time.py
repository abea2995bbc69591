"""How long CI takes here: `bash .ci/run` on a fresh clone of this checkout's HEAD, set-up and suite.

    .venv/bin/python benchmarks/ci_time.py

Clones HEAD beside this checkout (so `../shared` is beside the clone, as in CI), runs `.ci/run`
there (a fresh venv, the README's pip line, then the README's test command) and reads pytest's own
summary line for the suite's time and counts; the set-up time is the rest of the wall time. Writes
benchmarks/results/ci-time-cpu-<avx512-bf16|avx2>.{json,md} with the commit, the machine, its CPU
flags and the load it ran under. Run it on an otherwise idle machine: the suite's target is
10 minutes on an AVX2-only 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time

from _repo import ROOT, machine_kind, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, cpu_flags, library_versions, machine_info
from edgekit.bench.measure import load_average
from edgekit.report import markdown_table

RESULTS = ROOT / "benchmarks/results"
SUITE_TARGET_SECONDS = 600
# pytest -q ends with e.g. "863 passed, 5 skipped, 2 warnings in 515.23s (0:08:35)"
SUMMARY = re.compile(r"^=*\s*(?P<counts>\d+ \w+(?:, \d+ \w+)*) in (?P<seconds>[\d.]+)s", re.MULTILINE)
# and, above it (pyproject's --durations), the slowest phases: "54.30s setup    tests/test_x.py::test_y"
SLOWEST = re.compile(r"^(?P<seconds>[\d.]+)s (?P<phase>setup|call|teardown)\s+(?P<test>\S+)$", re.MULTILINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clone", default=str(ROOT.parent / "edgekit-ci-time"),
                        help="where the fresh clone goes (replaced if it exists); keep it beside the checkout")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    shutil.rmtree(args.clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), args.clone], check=True)
    load_before = load_average()
    began = time.perf_counter()
    ci = subprocess.run(["bash", ".ci/run"], cwd=args.clone, capture_output=True, text=True)
    wall = time.perf_counter() - began
    output = ci.stdout + ci.stderr
    summaries = list(SUMMARY.finditer(output))
    if ci.returncode != 0 or not summaries:
        print(output[-4000:])
        raise SystemExit(f"CI failed (exit {ci.returncode}) in {wall:.0f} s: nothing written")
    summary = summaries[-1]
    suite = float(summary["seconds"])
    kind = machine_kind()
    result = {
        "command": script_command(), "ci_command": "bash .ci/run", "commit": commit,
        "machine": machine_info(), "cpu_flags": cpu_flags(), "versions": library_versions(),
        "load_average_before": load_before, "load_average_end": load_average(), "note": args.note,
        "wall_seconds": round(wall, 1), "suite_seconds": round(suite, 1),
        "setup_seconds": round(wall - suite, 1), "suite_counts": summary["counts"],
        "suite_target_seconds": SUITE_TARGET_SECONDS, "meets_target": suite <= SUITE_TARGET_SECONDS,
        # where the suite's time goes, so the next cut starts from a measurement
        "slowest": [{"seconds": float(m["seconds"]), "phase": m["phase"], "test": m["test"]}
                    for m in SLOWEST.finditer(output)],
    }
    name = f"ci-time-cpu-{kind}"
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2) + "\n")
    lines = [
        f"# CI on this machine: suite {suite:.0f} s (target {SUITE_TARGET_SECONDS} s: "
        f"{'met' if result['meets_target'] else 'missed'}), {wall:.0f} s in all", "",
        f"`bash .ci/run` on a fresh clone of commit `{commit[:10]}`, timed by `{result['command']}`. "
        f"Machine: {result['machine']}; CPU flags {', '.join(result['cpu_flags']) or 'none of interest'}; "
        f"load average before {load_before}, after {result['load_average_end']}."
        + (f" {args.note}" if args.note else ""), "",
        markdown_table(["part", "seconds"], [
            ["set-up: venv and the README's pip line (wall time less the suite's)", f"{result['setup_seconds']:.0f}"],
            [f"suite: `python -m pytest -q` ({summary['counts']})", f"{suite:.0f}"],
            ["in all", f"{wall:.0f}"]]),
        "",
        "The slowest phases (pytest's --durations; a session fixture's setup is charged to the first test "
        "that asks for it):", "",
        markdown_table(["seconds", "phase", "test"],
                       [[f"{row['seconds']:.1f}", row["phase"], f"`{row['test']}`"] for row in result["slowest"]]),
        "",
    ]
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(lines))
    shutil.rmtree(args.clone, ignore_errors=True)
    print(f"CI: suite {suite:.0f} s ({summary['counts']}), set-up {result['setup_seconds']:.0f} s; benchmarks/results/{name}.md")


if __name__ == "__main__":
    main()
