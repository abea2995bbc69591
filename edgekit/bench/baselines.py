"""Bench baselines: what a user would do without edgekit, made and measured in the same run.

For each fp32 root: the root itself in torch eager, and every stock baseline the format table
lists (each format module's make_baseline), on the calibration set the lineage's int8 artifacts
used, so baselines and edgekit's files see the same images.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path

from ..artifacts import read_manifest, sha256_file
from ..config import BenchConfig, DataConfig
from ..errors import EdgekitError
from ..formats import FORMATS, SOURCE_FORMAT, Format
from ..report import Reporter, quiet
from ..lineage import Lineage, format_of_path_or_none, lineage, source_checkpoint
from .measure import MeasureContext, blank_row, why
from .row import BenchRow

STOCK_SOURCE = "stock torch eager fp32"


def baseline_label(path: Path, fmt: Format) -> str | None:
    """Baselines made by make_baselines say so in their manifest; a trained float checkpoint run in
    torch eager is what a user without edgekit would ship. That includes a reference stored with
    fp16 weights (benchmarks/models/): it is rebuilt in fp32 and computes in fp32."""
    with contextlib.suppress(EdgekitError):
        manifest = read_manifest(path)
        if manifest.get("extra", {}).get("baseline"):
            return manifest["extra"]["baseline"]
        precision = manifest.get("precision") or ""
        if (fmt is SOURCE_FORMAT and manifest.get("kind") == "checkpoint"
                and (precision == "fp32" or precision.startswith("fp16 storage"))):
            return STOCK_SOURCE
    return None


def _calibration_for(lin_chain: list[Path], data_config: DataConfig, config: BenchConfig, reporter: Reporter):
    """The calibration set every edgekit int8 artifact of this lineage used, so baselines see the same images."""
    from ..calibrate import DEFAULT_DIR, DEFAULT_SIZE, default_name, load_calibration, make_calibration
    from ..data import load_data

    data_config = DataConfig(**asdict(data_config))
    data_config.test_limit = None
    data = load_data(data_config, reporter)
    candidates = [Path(config.calibration)] if config.calibration else []
    for path in lin_chain:
        with contextlib.suppress(EdgekitError):
            manifest = read_manifest(path)
            for holder in (manifest.get("extra", {}), manifest.get("config", {})):
                ref = holder.get("calibration")
                ref = ref.get("path") if isinstance(ref, dict) else ref
                if isinstance(ref, str) and ref:
                    candidates.append(Path(ref))
    candidates.append(DEFAULT_DIR / f"{default_name(data_config, DEFAULT_SIZE)}.json")
    for path in candidates:
        if path.exists():
            return load_calibration(path, data), data
    reporter.info(f"bench: no calibration definition found ({', '.join(map(str, candidates))}); "
                  f"using a fresh seeded {DEFAULT_SIZE}-image set")
    return make_calibration(data, data_config, min(DEFAULT_SIZE, len(data.train_y)), seed=config.seed), data


def _skip_row(label: str, root: Path, fmt: str, runtime: str, why: str) -> BenchRow:
    row = blank_row(Path(f"{root.stem}-{label.replace(' ', '-')}"), fmt, runtime)
    row.baseline, row.status, row.why, row.root = label, "skipped", why, str(root)
    return row


def _up_to_date(path: Path, parent: Path, calibration_sha: str) -> bool:
    with contextlib.suppress(EdgekitError, OSError):
        manifest = read_manifest(path)
        return (path.exists() and manifest.get("parent", {}).get("sha256") == sha256_file(parent)
                and manifest.get("extra", {}).get("calibration", {}).get("pixels_sha256") == calibration_sha)
    return False


def _fp32_export(lineages: dict[Path, Lineage], root: Path, fmt: Format) -> Path | None:
    """An fp32 file of `fmt` exported straight from `root`, among the benched artifacts."""
    return next((p for p, lin in lineages.items() if len(lin.chain) == 2 and lin.root == root
                 and format_of_path_or_none(p) is fmt
                 and (read_manifest(p).get("precision") or "").startswith("fp32")), None)


def _unavailable(fmt: Format) -> str | None:
    try:
        return fmt.unavailable_reason()
    except ImportError as exc:
        return f"the {fmt.name} format module is not in this build ({exc})"


def make_baselines(artifacts: list[Path], config: BenchConfig,
                   reporter: Reporter = quiet) -> tuple[list[Path], list[BenchRow]]:
    """For each fp32 root among the artifacts' lineages: the root (torch eager) and each stock
    baseline of the format table. Returns the files to bench and skip rows saying what was not made."""
    made: list[Path] = []
    skipped: list[BenchRow] = []
    lineages = {p: lineage(p) for p in artifacts if p.exists()}
    roots = []
    for lin in lineages.values():
        if lin.root not in roots and source_checkpoint(lin.root) is not None:
            roots.append(lin.root)
    out_dir = Path(config.baseline_dir)
    for root in roots:
        made.append(root)  # torch eager fp32
        try:
            data_config = MeasureContext(config, reporter).data_config_for(Lineage([root]))
            chains = [lin.chain for lin in lineages.values() if lin.root == root]
            calibration, _ = _calibration_for([p for chain in chains for p in chain], data_config, config, reporter)
        except EdgekitError as exc:
            skipped.append(_skip_row("int8 baselines", root, "-", "-", f"no calibration set: {why(exc)}"))
            continue
        tag = f"{root.stem}-{sha256_file(root)[:8]}"
        for fmt in FORMATS.values():
            for baseline in fmt.baselines:
                runtime = fmt.all_runtimes()[0].name
                start = _fp32_export(lineages, root, fmt) if baseline.from_fp32_export else root
                if start is None:
                    skipped.append(_skip_row(baseline.label, root, fmt.name, runtime,
                                             f"no fp32 {fmt.name} export of this root among the artifacts (edgekit "
                                             f"export ... --target {fmt.name} --precision fp32)"))
                    continue
                reason = _unavailable(fmt)
                if reason is not None:
                    skipped.append(_skip_row(baseline.label, root, fmt.name, runtime, reason))
                    continue
                out = out_dir / f"{tag}-{baseline.slug}{fmt.suffix}"
                try:
                    if not _up_to_date(out, start, calibration.sha256):
                        reporter.info(f"bench: baseline {baseline.label} -> {out}")
                        fmt.module().make_baseline(baseline, start, out, calibration)
                    made.append(out)
                except Exception as exc:  # one baseline that cannot be made must not sink the run
                    skipped.append(_skip_row(baseline.label, root, fmt.name, runtime, why(exc)))
    return made, skipped
