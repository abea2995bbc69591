"""`edgekit export --bundle DIR`: one folder to copy to a device.

The folder holds the exported file (through the same parity gate as any export), its manifest,
labels.txt (one class name per line, in output order), the standalone runner scripts the format
table lists for the format (examples/, importing only their runtime, numpy and Pillow), a
README.txt with the commands, and edgekit-bundle.json, which marks the folder as edgekit's.

Atomic: the bundle is built in a hidden sibling folder and renamed into place, so DIR is either
the old bundle or the new one. An existing DIR is replaced only when it is an edgekit bundle (or
empty); never a folder edgekit did not make, never one holding the source.
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .artifacts import apply_umask, guard_folder, replace_path
from .config import DataConfig, ExportOptions
from .errors import DependencyError, UnsupportedError
from .export import ExportResult, default_out_path, export_artifact
from .formats import FORMATS, export_format, export_targets
from .formats.metadata import edgekit_version
from .report import Reporter, quiet

MARKER = "edgekit-bundle.json"
LABELS = "labels.txt"
# The runner scripts live in the repository's examples/ (they are not part of the package: each
# imports only its runtime, numpy and Pillow).
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


@dataclass
class BundleResult:
    path: Path
    model: Path
    runners: list[Path]
    export: ExportResult


def example_scripts(target: str) -> list[Path]:
    """The standalone runners of `target`'s files, from its format table entry."""
    fmt = export_format(target)
    if not fmt.examples:
        with_runners = [name for name in export_targets() if FORMATS[name].examples]
        raise UnsupportedError(f"there is no standalone runner for {target} files to put in a bundle",
                               f"bundle one of: {', '.join(with_runners)}, or export without --bundle")
    scripts = [EXAMPLES_DIR / name for name in fmt.examples]
    missing = [str(s) for s in scripts if not s.is_file()]
    if missing:
        raise DependencyError(f"the runner scripts {', '.join(missing)} are not here (a bundle copies them from the "
                              "repository's examples/ folder)", "run edgekit from a checkout: pip install -e .")
    return scripts


def _install_line(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip().startswith("pip install")), "")


def _readme(result: ExportResult, scripts: list[Path]) -> str:
    meta = result.metadata
    model = result.path.name
    shape = "x".join("N" if d is None else str(d) for d in meta.input_shape)
    lines = [f"{model}: {result.target} {result.precision}, exported by edgekit {meta.edgekit_version} from "
             f"{meta.source_file} (sha256 {meta.source_sha256[:16]}), passed the parity gate "
             f"({result.parity.top1_agreement:.2%} top-1 agreement with its source).",
             "",
             f"Classes ({len(meta.classes)}, in output order): {LABELS}",
             f"Input: {meta.input_dtype} {meta.input_layout} {shape}; {meta.color}, resized {meta.resize}, pixels x "
             f"{meta.pixel_scale:.6g} in {meta.pixel_range}"
             + (f", quantized with scale {meta.input_quantization['scale']:.6g} and zero point "
                f"{meta.input_quantization['zero_point']}" if meta.input_quantization else "")
             + "; the model normalizes inside (do not subtract a mean). The file carries this itself.",
             "",
             "Run it on the device (only the runtime, numpy and Pillow are needed, not edgekit):", ""]
    for script in scripts:
        lines += [f"    {_install_line(script)}", f"    python {script.name} {model} IMAGE.jpg", ""]
    lines.append("Each prints the top-5 classes: rank, class index, probability, class name.")
    return "\n".join(lines) + "\n"


def export_bundle(source: Path, target: str, precision: str, bundle: Path, options: ExportOptions | None = None,
                  reporter: Reporter = quiet, data_config: DataConfig | None = None) -> BundleResult:
    source, bundle = Path(source), Path(bundle)
    scripts = example_scripts(target)
    guard_folder(bundle, "--bundle", sources=(source,), marker=MARKER, made="bundle")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", suffix=".tmp", dir=bundle.parent))
    try:
        result = export_artifact(source, target, precision, staging / default_out_path(source, target, precision).name,
                                 options, reporter, data_config=data_config)
        for script in scripts:
            shutil.copyfile(script, staging / script.name)
        (staging / LABELS).write_text("\n".join(result.metadata.classes) + "\n")
        (staging / "README.txt").write_text(_readme(result, scripts))
        (staging / MARKER).write_text(json.dumps({
            "kind": "bundle", "model": result.path.name, "format": target, "precision": result.precision,
            "runners": [s.name for s in scripts], "edgekit_version": edgekit_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
        apply_umask(staging)
        replace_path(staging, bundle)  # an existing bundle is edgekit's, checked above
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result.path = bundle / result.path.name
    reporter.info(f"bundle: {bundle} ({', '.join(p.name for p in sorted(bundle.iterdir()))})")
    return BundleResult(path=bundle, model=result.path, runners=[bundle / s.name for s in scripts],
                        export=result)
