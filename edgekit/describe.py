"""What a file holds and what this machine can do: the rows `edgekit info` and `edgekit doctor` print.

Library functions, so a notebook or a script gets the same answers as the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .artifacts import library_versions, machine_info, manifest_path, read_manifest, sha256_file, size_bytes
from .errors import CheckpointError
from .formats import FORMATS, SOURCE_FORMAT, format_of_path


def describe_artifact(artifact: Path) -> tuple[list[list[Any]], list[str]]:
    """(rows, warnings): manifest, parameters, MACs, size, precision census and, for an exported
    file, the metadata it carries."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise CheckpointError(f"artifact not found: {artifact}", "check the path")
    warnings: list[str] = []
    fmt = format_of_path(artifact)
    rows: list[list[Any]] = [["file", str(artifact)], ["size (MB)", round(size_bytes(artifact) / 1e6, 3)],
                             ["format", fmt.name]]
    if fmt is SOURCE_FORMAT:
        from .model import build_model, count_macs, count_parameters
        from .qmodel import torch_artifact_spec
        from .spec import STAGE_CHANNELS_MEANING

        spec, _, int8 = torch_artifact_spec(artifact)
        model = build_model(spec)  # the architecture: an int8 file has the same shapes, its weights int8
        rows += [["architecture", f"{spec.arch}, width {spec.width:g}" + (" (pruned)" if spec.is_pruned else "")],
                 ["parameters", count_parameters(model)], ["MACs (batch 1)", count_macs(model)],
                 [f"stage channels ({STAGE_CHANNELS_MEANING[spec.arch]})", list(spec.stage_channels)],
                 ["int8 model", "yes" if int8 else "no"]]
    rows.append(["census", json.dumps(fmt.module().census(artifact))])
    read_metadata = getattr(fmt.module(), "read_metadata", None)  # exported formats describe themselves
    if read_metadata is not None:
        from .formats.metadata import summary_rows

        metadata = read_metadata(artifact)
        rows += summary_rows(metadata) if metadata else [["metadata", "none (not written by this edgekit's export)"]]
    if not manifest_path(artifact).exists():
        return rows + [["manifest", "none"]], warnings
    manifest = read_manifest(artifact)
    recorded, actual = manifest.get("sha256"), sha256_file(artifact)
    if recorded != actual:
        warnings.append(f"the manifest beside {artifact} does not describe this file (sha256 {str(recorded)[:12]} "
                        f"recorded, {actual[:12]} actual): the file was replaced or edited after edgekit wrote it; "
                        "its lineage and metrics below are not this file's")
    rows.append(["sha256", actual[:16] + ("" if recorded == actual else " (differs from the manifest)")])
    rows += [[key, manifest.get(key)] for key in ("kind", "precision", "command", "seed", "created")]
    parent = manifest.get("parent") or {}
    rows.append(["parent", f"{parent.get('path')} ({parent.get('sha256', '')[:12]})" if parent else "-"])
    rows.append(["metrics", json.dumps(manifest.get("metrics", {}))])
    return rows, warnings


def machine_report() -> list[list[Any]]:
    """Versions, CPU, CUDA/GPU, and which formats can run here (with how to get the rest)."""
    import torch

    rows: list[list[Any]] = [[name, version] for name, version in library_versions().items()]
    machine = machine_info()
    rows += [["cpu", machine["processor"]], ["cores", machine["cpu_count"]]]
    if torch.cuda.is_available():
        rows.append(["cuda", f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"])
    else:
        rows.append(["cuda", "no GPU visible to torch (training runs on the CPU; for CUDA see README 'GPU set-up')"])
    for name, fmt in FORMATS.items():
        try:
            reason = fmt.unavailable_reason()
        except ImportError as exc:  # the format module itself is not in this build yet
            reason = f"format module missing ({exc})"
        rows.append([f"format {name}", "available" if reason is None else f"unavailable: {reason}"])
    return rows
