"""`edgekit export`: write a checkpoint as a deployable file, gated on parity with its source.

The flow, the same for every target in the format table: check the target can run here, read
the source once (formats/source.py: the exporter, the gate's reference runner, the manifest's
source sha256 and the data config all come from that one read), load the data the checkpoint
was trained on (for real parity images, and the calibration set for int8), export to a
temporary path, write the file's self-description into it (class names, input
layout/shape/dtype, pixel preparation, int8 I/O quantization, edgekit version, source sha256:
edgekit/formats/metadata.py) so the gate and the hash see the final bytes, compare it with the
source runner on seeded test images, refuse it beyond tolerance, count what the file really
holds, then move it into place with a manifest. Nothing here names a format: the table
in edgekit.formats does.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import Manifest, guard_output, parent_ref, publish, remove_path, staging_path, to_plain
from .config import CalibrationConfig, DataConfig, ExportOptions, data_config_from_dict
from .errors import ConfigError, DependencyError, ParityError, install_hint
from .formats import FORMATS, SOURCE_FORMAT, SourceFile, export_format
from .formats.metadata import DeployMetadata, describe_export
from .report import Reporter, quiet
from .validate import LAYER_TOLERANCE, ParityReport, check, parity, precision_label, violations

if TYPE_CHECKING:
    from .data import DataSplits


@dataclass
class ExportResult:
    path: Path
    target: str
    precision: str  # as counted in the file
    executed_precision: str  # as the runtime computes, where the format can tell (else = precision)
    requested_precision: str
    parity: ParityReport
    census: dict[str, Any]
    manifest: Manifest
    debug: dict[str, Any] | None = field(default=None)
    metadata: DeployMetadata | None = None  # what the file says about itself


# The parity gate feeds the exported runner this many images per call, so a dynamic-batch file is
# gated at a batch above 1 (a static one runs its own batch, padded).
PARITY_BATCH = 64


def default_out_path(source: Path, target: str, precision: str) -> Path:
    """best.pt -> best.fp16.onnx beside it."""
    return source.with_name(f"{source.stem}.{precision}{FORMATS[target].suffix}")


def _resolve_target(target: str, precision: str):
    fmt = export_format(target, precision)
    try:
        module = fmt.module()
    except ImportError as exc:
        raise DependencyError(f"the {target} exporter cannot be imported ({exc})",
                              install_hint(fmt.extra)) from exc
    reason = module.unavailable_reason()
    if reason:
        raise DependencyError(f"cannot export to {target} on this machine: {reason}", install_hint(fmt.extra))
    return fmt, module


def _data_config(source_extra: dict[str, Any], options: ExportOptions, explicit: DataConfig | None) -> DataConfig:
    if explicit is not None:
        return explicit
    if isinstance(source_extra.get("data_config"), dict):
        return data_config_from_dict(source_extra["data_config"])
    if options.calibration:
        from .calibrate import calibration_data_config

        return calibration_data_config(options.calibration)
    raise ConfigError("the source checkpoint does not record the data it was trained on (extra['data_config'])",
                      "pass the data options (--source/--data-dir) so export can load real images for the parity gate")


def _source_precision(source: SourceFile) -> str:
    """int8 or fp32, as the source's manifest records it (fp32 where it has none)."""
    label = str((source.manifest or {}).get("precision", "fp32"))
    return "int8" if "int8" in label else "fp32"


def parity_subset(count: int, total: int, seed: int) -> np.ndarray:
    """Seeded choice of test images, sorted so reports name stable indices."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(count, total), replace=False))


def export_artifact(source: Path, target: str, precision: str, out: Path | None = None,
                    options: ExportOptions | None = None, reporter: Reporter = quiet,
                    data_config: DataConfig | None = None, data: DataSplits | None = None,
                    force: bool = False) -> ExportResult:
    """Export `source` (an edgekit checkpoint; for int8, also an int8 artifact) to `target`, gated on parity.

    `data`: the splits already loaded by the caller (the quantize stage), else loaded here.
    `out` may be an existing folder to write the default file name into. An existing `out` is
    replaced only when it is an earlier edgekit export (or with `force`); never the source."""
    from .data import load_data, to_unit_float

    options = options or ExportOptions()
    source = Path(source)
    fmt, module = _resolve_target(target, precision)
    if options.dynamic_batch and options.batch != 1:
        raise ConfigError("--batch and --dynamic-batch exclude each other", "pass one of them")
    if options.int8_io and not fmt.int8_io:
        holders = ", ".join(name for name, f in FORMATS.items() if f.int8_io)
        raise ConfigError(f"--int8-io does not apply to {target}: only {holders} files have int8 input/output "
                          f"tensors ({target} files take float32 pixels)", "drop --int8-io")
    if options.int8_io and precision != "int8":
        raise ConfigError("--int8-io needs --precision int8", "add --precision int8, or drop --int8-io")
    options.validate()
    if precision == "int8" and not options.calibration:
        raise ConfigError(f"int8 {target} export needs a calibration set",
                          f"make one with `edgekit calibrate --source ... --size {CalibrationConfig.size}` (it writes "
                          f"calibration/<data>-{CalibrationConfig.size}.json) and pass --calibration "
                          f"calibration/<data>-{CalibrationConfig.size}.json")
    if options.calibration:  # a bad path is refused even where the precision does not use it
        from .calibrate import read_definition

        read_definition(options.calibration)
    if data_config is not None:
        data_config.validate()
    loaded = SourceFile.read(source)  # the one read of the source: everything below works from it
    checkpoint = loaded.checkpoint(precision)
    out = Path(out) if out else default_out_path(source, target, precision)
    writes_folder = fmt.folder
    if out.is_dir() and not (writes_folder and out.name.endswith(fmt.suffix)):
        out = out / default_out_path(source, target, precision).name
    guard_output(out, "export", sources=(source,), force=force, directory=writes_folder)

    if data is None:
        data = load_data(_data_config(checkpoint.extra, options, data_config), reporter)
    if checkpoint.classes and list(checkpoint.classes) != list(data.classes):
        raise ConfigError(f"{source.name} was trained on classes {checkpoint.classes}, the data has {data.classes}",
                          "load the data the checkpoint was trained on")
    calibration = None
    if precision == "int8":
        from .calibrate import load_calibration

        calibration = load_calibration(options.calibration, data, checkpoint.spec)
    chosen = parity_subset(options.parity_images, len(data.test_y), options.seed)
    images = to_unit_float(data.test_x[chosen]).numpy()
    labels = data.test_y[chosen].numpy()

    # A hidden sibling keeps the final rename on one file system; the suffix is kept because
    # some exporters (and runtimes) decide by it. A killed export leaves only this behind.
    staging = staging_path(out)
    remove_path(staging)
    debug = None
    parent = parent_ref(source, loaded.sha256)
    try:
        module.export(loaded, staging, precision, options, calibration, reporter)
        # Written into the file before the gate and the hash: the gate checks the final bytes.
        metadata = module.write_metadata(staging, describe_export(
            data.classes, checkpoint.spec.mean, checkpoint.spec.std, target, precision, options.dynamic_batch,
            source.name, parent["sha256"]))
        source_runner = SOURCE_FORMAT.module().load_runner(loaded, options.threads)
        exported_runner = module.load_runner(staging, options.threads)
        reporter.info(f"parity: {len(images)} seeded test images, {source_runner.name} vs {exported_runner.name}")
        report = parity(source_runner, exported_runner, images, labels, batch_size=PARITY_BATCH)
        source_precision = _source_precision(loaded)
        failing = violations(report, target, precision, source_precision)
        debugger = getattr(module, "debug_divergence", None)
        if options.debug_parity and debugger is not None:
            debug = debugger(checkpoint.build(), staging, images[:16], LAYER_TOLERANCE[precision])
            first = debug.get("first_divergent")
            reporter.info("debug-parity: first divergent layer: "
                          + (f"{first['onnx_node']} (torch {first['torch_module']}, relative error "
                             f"{first['relative_max_error']:.3g})" if first else "none beyond tolerance"))
        if failing:
            if options.keep_failed:
                kept = out.with_name(f"{out.stem}.failed{fmt.suffix}")
                if not kept.is_dir():  # a kept failure is edgekit's own debugging file
                    os.replace(staging, kept)
                reporter.info(f"kept the failing file as {kept}")
            try:
                check(report, target, precision, source_precision)
            except ParityError as exc:
                if debug and debug.get("first_divergent"):
                    first = debug["first_divergent"]
                    exc.message += f"; first divergent layer: {first['onnx_node']} ({first['torch_module']})"
                raise
        census = module.census(staging)
        label = precision_label(census)
        executed = precision_label(census, executed=True)
        if executed != label:
            reporter.info(f"note: the file stores {label} weights; {exported_runner.name} computes {executed} "
                          "(see the census in the manifest)")
        extra_fn = getattr(module, "manifest_extra", None)
        manifest = publish(staging, out, Manifest(
            kind="export", format=target, precision=label, parent=parent,
            config={"target": target, "requested_precision": precision, "options": asdict(options),
                    "calibration": calibration.manifest_ref() if calibration is not None else None,
                    "parity_images_indices_seed": options.seed, "parity_batch": PARITY_BATCH,
                    "data": data.describe()},
            seed=options.seed,
            metrics={"parity": report.as_metrics(), "accuracy_parity_images": report.exported_accuracy,
                     "source_accuracy_parity_images": report.source_accuracy, "census": census,
                     "executed_precision": executed},
            extra={"metadata": metadata.to_dict()} | (extra_fn(staging, loaded) if extra_fn else {})
            | ({"debug_parity": debug} if debug else {}),
        ))
    finally:
        remove_path(staging)
    reporter.table(f"export {target} {precision} -> {out.name}", ["metric", "value"], [
        ("precision (counted in file)", label), ("precision (as executed)", executed),
        ("top-1 agreement", f"{report.top1_agreement:.2%}"),
        ("max |logit error|", report.max_abs), ("cosine (mean)", report.cosine_mean),
        ("accuracy source / export", f"{report.source_accuracy:.2%} / {report.exported_accuracy:.2%}"),
        ("right only in source / only in export", f"{report.source_only_correct} / {report.exported_only_correct} "
                                                  f"(McNemar p {report.drop_p_value:.3g})"),
        ("size (bytes)", manifest.size_bytes)])
    return ExportResult(path=out, target=target, precision=label, executed_precision=executed,
                        requested_precision=precision, parity=report,
                        census=to_plain(census), manifest=manifest, debug=debug, metadata=metadata)
