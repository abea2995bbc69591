"""Bench: one honest table of accuracy, latency and size for every artifact, measured in one run.

Protocol (recorded in every result file):
  * every artifact runs through its format's runner (edgekit.formats), and through each
    runtime listed for that format in RUNTIMES (an ONNX file: ONNX Runtime, and OpenVINO
    when it is installed); each runtime is its own row;
  * accuracy on the test split of the data the artifact's lineage was trained on (parent
    links up to the root checkpoint, whose `extra.data_config` says which data), and top-1
    agreement with the fp32 root and with the nearest torch source on the same images;
  * batch-1 latency: `warmup` untimed calls, then timed calls until both `runs` calls and
    `min_seconds` have passed; p50/p90/p99 and the mean with a seeded bootstrap 95 % CI.
    Consecutive calls are not independent (caches, frequency, neighbours on a shared
    machine), so the CI describes this sample, not the machine;
  * a throughput sweep over batch sizes, each for `sweep_seconds` (at least 3 calls);
  * thread count fixed for every runtime and recorded, with the CPU model and flags, library
    versions, GPU and the load average before, during (per row) and after.

A row that cannot run (missing or corrupt file, runtime not installed, a batch the file does
not accept) says why and the rest of the run goes on.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .artifacts import (Manifest, atomic_write_text, cpu_flags, library_versions, machine_info, manifest_path,
                        parent_ref, read_manifest, sha256_file, to_plain, write_manifest)
from .config import BenchConfig, DataConfig, data_config_from_dict
from .errors import CheckpointError, ConfigError, EdgekitError
from .formats import FORMATS, Format, format_of_path
from .report import Reporter, markdown_table, quiet

BENCH_FORMAT = "edgekit-bench/1"


# ---- runtimes: which engines can run a format's file -------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """One engine that runs files of a format. `load(path, threads)` returns a Runner."""

    name: str
    load: Callable[[Path, int], Any]
    unavailable: Callable[[], str | None]


def _format_runtime(fmt: Format, name: str) -> Runtime:
    """The format module's own runner (the one export's parity gate uses)."""
    return Runtime(name, lambda path, threads: fmt.module().load_runner(path, threads),
                   lambda: fmt.unavailable_reason())


class _OpenVinoRunner:
    name = "openvino"

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads)})

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(np.ascontiguousarray(batch, dtype=np.float32))[0], dtype=np.float32)


def _openvino_unavailable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (optional CPU runtime for ONNX files): pip install 'edgekit[openvino]'"
    return None


# The default runtime of a format is named after the engine, so rows stay comparable across
# runs; formats not listed here get one runtime named after the format.
RUNTIMES: dict[str, tuple[Runtime, ...]] = {
    "torch": (_format_runtime(FORMATS["torch"], "torch-eager"),),
    "onnx": (_format_runtime(FORMATS["onnx"], "onnxruntime"),
             Runtime("openvino", lambda path, threads: _OpenVinoRunner(path, threads), _openvino_unavailable)),
    "tflite": (_format_runtime(FORMATS["tflite"], "tflite"),),
}


def runtimes_for(fmt: Format) -> tuple[Runtime, ...]:
    return RUNTIMES.get(fmt.name) or (_format_runtime(fmt, fmt.name),)


# ---- environment -------------------------------------------------------------------------------


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def gpu_info() -> dict[str, str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if out:
            name, driver = (part.strip() for part in out.splitlines()[0].split(",", 1))
            return {"name": name, "driver": driver}
    return None


def environment(threads: int) -> dict[str, Any]:
    machine = machine_info()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": machine.get("processor"),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(affinity) if affinity is not None else None,
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "gpu": gpu_info(),
        "load_average_start": load_average(),
    }


# ---- lineage: parent links up to the fp32 root -------------------------------------------------


@dataclass
class Lineage:
    chain: list[Path]  # the artifact, its parent, ..., the root (existing files only)
    notes: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.chain[-1]


def _normalized(path: Path) -> Path:
    """One spelling per file (relative to the working directory when inside it), so a root named
    on the command line and the same root recorded as an absolute parent path are one root."""
    resolved = path.resolve()
    with contextlib.suppress(ValueError):
        return resolved.relative_to(Path.cwd().resolve())
    return resolved


def _resolve_parent(child: Path, recorded: str) -> Path | None:
    """A parent path as recorded (relative to where the command ran), or beside the child."""
    candidate = Path(recorded)
    for path in (candidate, child.parent / candidate.name, child.parent / candidate):
        if path.exists():
            return _normalized(path)
    return None


def lineage(artifact: Path) -> Lineage:
    chain, notes, seen = [_normalized(artifact) if artifact.exists() else artifact], [], {artifact.resolve()}
    current = artifact
    while True:
        try:
            parent = read_manifest(current).get("parent") or {}
        except EdgekitError:
            break
        if not parent.get("path"):
            break
        found = _resolve_parent(current, parent["path"])
        if found is None:
            notes.append(f"parent {parent['path']} of {current.name} not found; lineage stops there")
            break
        if found.resolve() in seen:
            break
        if parent.get("sha256") and found.is_file() and sha256_file(found) != parent["sha256"]:
            notes.append(f"{found} changed since {current.name} was made from it (sha256 differs)")
        seen.add(found.resolve())
        chain.append(found)
        current = found
    return Lineage(chain, notes)


def _torch_checkpoint(path: Path):
    """The checkpoint at `path` if it is an edgekit fp32/pruned checkpoint, else None."""
    from .model import load_checkpoint

    if not path.is_file() or format_of_path_or_none(path) is not FORMATS["torch"]:
        return None
    try:
        checkpoint = load_checkpoint(path)
        checkpoint.build()
        return checkpoint
    except (EdgekitError, RuntimeError, KeyError, TypeError, ValueError):
        return None  # e.g. a torch int8 checkpoint: not buildable as the fp32 ResNet18


def format_of_path_or_none(path: Path) -> Format | None:
    try:
        return format_of_path(path)
    except EdgekitError:
        return None


# ---- discovery ---------------------------------------------------------------------------------


def discover(directory: Path) -> list[Path]:
    """Every artifact under `directory`: a file (or .savedmodel folder) of a known suffix with a manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--dir {directory} is not a directory", "pass the folder holding your artifacts")
    found = []
    for path in sorted(directory.rglob("*")):
        if path.name.endswith(".manifest.json") or path.name.startswith("."):
            continue
        if format_of_path_or_none(path) is not None and manifest_path(path).exists():
            found.append(path)
    return found


# ---- measurement -------------------------------------------------------------------------------


def latency_stats(samples_ms: np.ndarray, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """Percentiles and the mean with a bootstrap 95 % confidence interval (seeded)."""
    samples_ms = np.asarray(samples_ms, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # Bootstrap in chunks so a 20k-sample run does not allocate 2000 x 20k at once.
    means = []
    for start in range(0, resamples, 250):
        idx = rng.integers(0, len(samples_ms), size=(min(250, resamples - start), len(samples_ms)))
        means.append(samples_ms[idx].mean(axis=1))
    means = np.concatenate(means)
    return {
        "p50": float(np.percentile(samples_ms, 50)),
        "p90": float(np.percentile(samples_ms, 90)),
        "p99": float(np.percentile(samples_ms, 99)),
        "mean": float(samples_ms.mean()),
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
        "std": float(samples_ms.std(ddof=1)) if len(samples_ms) > 1 else 0.0,
        "min": float(samples_ms.min()),
        "runs": int(len(samples_ms)),
        "seconds": float(samples_ms.sum() / 1e3),
    }


def time_batch1(runner: Any, inputs: np.ndarray, config: BenchConfig) -> dict[str, Any]:
    """Warm up, then time single-image calls until both `runs` calls and `min_seconds` have passed."""
    n = len(inputs)
    for i in range(config.warmup):
        runner.predict(inputs[i % n: i % n + 1])
    samples, start, i = [], time.perf_counter(), 0
    deadline = config.min_seconds
    while len(samples) < config.runs or time.perf_counter() - start < deadline:
        x = inputs[i % n: i % n + 1]
        t0 = time.perf_counter_ns()
        runner.predict(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
    return latency_stats(np.array(samples), config.seed)


def throughput(runner: Any, inputs: np.ndarray, batch: int, seconds: float) -> dict[str, Any]:
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])), dtype=np.float32)
    runner.predict(x)  # warm-up at this shape (allocations, shape-specialised kernels)
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        runner.predict(x)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"images_per_s": batch * len(times) / total, "ms_per_batch_p50": float(np.median(times) * 1e3),
            "calls": len(times)}


def predict_all(runner: Any, images: np.ndarray, batch: int) -> tuple[np.ndarray, int]:
    """Logits for every image; falls back to one image at a time for files with a static batch of 1."""
    try:
        first = runner.predict(images[:batch])
    except Exception:
        if batch == 1:
            raise
        return predict_all(runner, images, 1)
    outputs = [np.asarray(first)]
    for start in range(batch, len(images), batch):
        outputs.append(np.asarray(runner.predict(images[start:start + batch])))
    return np.concatenate(outputs).astype(np.float32), batch


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class BenchRun:
    rows: list[dict[str, Any]]
    environment: dict[str, Any]
    protocol: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # about the run as a whole (e.g. artifacts not made)

    def to_dict(self) -> dict[str, Any]:
        return {"format": BENCH_FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "environment": self.environment, "protocol": self.protocol, "notes": self.notes, "rows": self.rows}


class _Context:
    """Per-run caches: data per data config, predictions of fp32 sources, calibration sets."""

    def __init__(self, config: BenchConfig, reporter: Reporter) -> None:
        self.config, self.reporter = config, reporter
        self.data: dict[str, Any] = {}
        self.source_predictions: dict[str, np.ndarray] = {}
        self.model_stats: dict[str, tuple[int, int]] = {}

    def data_config_for(self, lin: Lineage) -> DataConfig:
        if self.config.data is not None:
            config = DataConfig(**asdict(self.config.data))
        else:
            config = None
            for path in reversed(lin.chain):  # the root first: it names the data the lineage learned
                checkpoint = _torch_checkpoint(path)
                if checkpoint is not None and checkpoint.extra.get("data_config"):
                    config = data_config_from_dict(checkpoint.extra["data_config"])
                    break
            if config is None:
                raise ConfigError(f"no data config in the lineage of {lin.chain[0]} (root {lin.root})",
                                  "pass --source/--data-dir to say which test split to measure on")
        if self.config.test_limit:
            config.test_limit = self.config.test_limit
        return config

    def test_set(self, data_config: DataConfig):
        from .data import load_data, to_unit_float

        key = json.dumps(to_plain(data_config), sort_keys=True)
        if key not in self.data:
            data = load_data(data_config, self.reporter)
            self.data[key] = (data, to_unit_float(data.test_x).numpy(), data.test_y.numpy())
        return self.data[key]

    def torch_predictions(self, path: Path, images: np.ndarray, key: str) -> np.ndarray | None:
        cache_key = f"{path.resolve()}|{key}"
        if cache_key not in self.source_predictions:
            checkpoint = _torch_checkpoint(path)
            if checkpoint is None:
                return None
            runner = FORMATS["torch"].module().TorchRunner(checkpoint.build(), self.config.threads)
            logits, _ = predict_all(runner, images, self.config.eval_batch)
            self.source_predictions[cache_key] = logits.argmax(1)
        return self.source_predictions[cache_key]

    def params_macs(self, path: Path) -> tuple[int, int] | None:
        from .model import count_macs, count_parameters

        key = str(path.resolve())
        if key not in self.model_stats:
            checkpoint = _torch_checkpoint(path)
            if checkpoint is None:
                return None
            model = checkpoint.build()
            self.model_stats[key] = (count_parameters(model), count_macs(model))
        return self.model_stats[key]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _why(exc: BaseException) -> str:
    if isinstance(exc, EdgekitError):
        return f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _blank_row(path: Path, fmt_name: str, runtime: str) -> dict[str, Any]:
    return {"artifact": str(path), "format": fmt_name, "runtime": runtime, "runner": None, "kind": None,
            "precision": None, "baseline": None, "status": "error", "why": None, "accuracy": None,
            "test_images": None, "agreement_root": None, "agreement_source": None, "root": None, "source": None,
            "latency_ms": None, "throughput": {}, "size_bytes": None, "params": None, "macs": None,
            "census": None, "load_average": load_average(), "notes": []}


def _bench_one(path: Path, fmt: Format, runtime: Runtime, ctx: _Context, baseline: str | None) -> dict[str, Any]:
    config = ctx.config
    row = _blank_row(path, fmt.name, runtime.name)
    row["baseline"] = baseline
    try:
        if not path.exists():
            raise CheckpointError(f"file not found: {path}", "check the path or re-create the artifact")
        row["size_bytes"] = _size(path)
        with contextlib.suppress(EdgekitError):
            manifest = read_manifest(path)
            row["kind"], row["precision"] = manifest.get("kind"), manifest.get("precision")
            row["manifest_config"] = manifest.get("config")
        reason = runtime.unavailable()
        if reason is not None:
            row["status"], row["why"] = "unavailable", reason
            return row
        with contextlib.suppress(Exception):
            row["census"] = fmt.module().census(path)
        lin = lineage(path)
        row["notes"] += lin.notes
        row["root"] = str(lin.root)
        source = next((p for p in lin.chain if _torch_checkpoint(p) is not None), None)
        row["source"] = str(source) if source else None
        if source is not None:
            row["params"], row["macs"] = ctx.params_macs(source)
        data_config = ctx.data_config_for(lin)
        data, images, labels = ctx.test_set(data_config)
        runner = runtime.load(path, config.threads)
        row["runner"] = getattr(runner, "name", runtime.name)
        logits, used_batch = predict_all(runner, images, config.eval_batch)
        if used_batch == 1 and config.eval_batch > 1:
            row["notes"].append("the file takes one image per call (static batch 1)")
        predicted = logits.argmax(1)
        row["accuracy"] = float((predicted == labels).mean())
        row["test_images"] = int(len(labels))
        row["data"] = data.source
        key = json.dumps(to_plain(data_config), sort_keys=True)
        root_pred = ctx.torch_predictions(lin.root, images, key)
        if root_pred is not None:
            row["agreement_root"] = float((predicted == root_pred).mean())
            if config.diff and lin.root.resolve() != path.resolve():  # issue 14 hook: flips vs the fp32 root
                from .diagnose import diff_summary_line

                row["diff_root"] = diff_summary_line(root_pred, predicted, labels, list(data.classes))
                row["notes"].append(f"vs {lin.root.name}: {row['diff_root']['text']}")
        source_pred = ctx.torch_predictions(source, images, key) if source is not None else None
        if source_pred is not None:
            row["agreement_source"] = float((predicted == source_pred).mean())
        row["latency_ms"] = time_batch1(runner, images, config)
        for batch in config.batches:
            try:
                row["throughput"][str(batch)] = throughput(runner, images, batch, config.sweep_seconds)
            except Exception as exc:  # a static-shape file refuses other batch sizes
                row["throughput"][str(batch)] = {"images_per_s": None, "why": _why(exc)}
        row["status"] = "ok"
    except Exception as exc:  # one broken artifact must not sink the run: its row says why
        row["status"], row["why"] = "error", _why(exc)
    row["load_average_end"] = load_average()
    return row


def bench(artifacts: Iterable[Path], config: BenchConfig, reporter: Reporter = quiet,
          directory: Path | None = None, out: Path | None = None, notes: Iterable[str] = ()) -> BenchRun:
    """Measure every artifact with every runtime that can read it; write the result files if `out` is given."""
    if config.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {config.threads}", "use e.g. --threads 2")
    if not config.batches or any(b < 1 for b in config.batches):
        raise ConfigError(f"batch sizes must be positive, got {config.batches}", "use e.g. --batches 1,8,32,128")
    paths = [Path(p) for p in artifacts]
    if directory is not None:
        paths += discover(Path(directory))
    unique, seen = [], set()
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    skipped: list[dict[str, Any]] = []
    if config.baselines:
        made, skipped = make_baselines(unique, config, reporter)
        for path in made:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                unique.append(path)
    if not unique:
        raise ConfigError("no artifacts to bench", "pass artifact files or --dir artifacts/")
    _pin_threads(config.threads)
    env = environment(config.threads)
    ctx = _Context(config, reporter)
    rows = list(skipped)
    jobs = []
    for path in unique:
        fmt = format_of_path_or_none(path)
        if fmt is None:
            row = _blank_row(path, "?", "?")
            row["why"] = f"unknown file type (known suffixes: {', '.join(f.suffix for f in FORMATS.values())})"
            rows.append(row)
            continue
        jobs += [(path, fmt, runtime) for runtime in runtimes_for(fmt)]
    with reporter.progress("bench", total=len(jobs)) as progress:
        for path, fmt, runtime in jobs:
            row = _bench_one(path, fmt, runtime, ctx, _baseline_label(path, fmt))
            rows.append(row)
            progress.advance(1, artifact=path.name, runtime=runtime.name, status=row["status"])
    env["load_average_end"] = load_average()
    _annotate(rows, env)
    protocol = {k: v for k, v in to_plain(config).items() if k not in ("data",)}
    if config.data is not None:
        protocol["data_override"] = to_plain(config.data)
    result = BenchRun(rows, env, protocol, notes=list(notes))
    reporter.table("bench", TABLE_COLUMNS, table_rows(rows))
    if out is not None:
        result.outputs = write_outputs(result, Path(out))
        reporter.info("bench: wrote " + ", ".join(str(p) for p in result.outputs.values()))
    return result


def _pin_threads(threads: int) -> None:
    """torch's pool is process-wide; ORT and TFLite take `threads` per session in their runners."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # can only be set once per process
        torch.set_num_interop_threads(1)


def _baseline_label(path: Path, fmt: Format) -> str | None:
    """Baselines made by make_baselines say so in their manifest; a trained float checkpoint run in
    torch eager is what a user without edgekit would ship. That includes a reference stored with
    fp16 weights (benchmarks/models/): it is rebuilt in fp32 and computes in fp32."""
    with contextlib.suppress(EdgekitError):
        manifest = read_manifest(path)
        if manifest.get("extra", {}).get("baseline"):
            return manifest["extra"]["baseline"]
        precision = manifest.get("precision") or ""
        if (fmt is FORMATS["torch"] and manifest.get("kind") == "checkpoint"
                and (precision == "fp32" or precision.startswith("fp16 storage"))):
            return "stock torch eager fp32"
    return None


# ---- baselines: what a user would do without edgekit -------------------------------------------


def _calibration_for(lin_chain: list[Path], data_config: DataConfig, config: BenchConfig, reporter: Reporter):
    """The calibration set every edgekit int8 artifact of this lineage used, so baselines see the same images."""
    from .calibrate import DEFAULT_DIR, DEFAULT_SIZE, default_name, load_calibration, make_calibration
    from .data import load_data

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


def _skip_row(label: str, root: Path, fmt: str, runtime: str, why: str) -> dict[str, Any]:
    row = _blank_row(Path(f"{root.stem}-{label.replace(' ', '-')}"), fmt, runtime)
    row.update(baseline=label, status="skipped", why=why, root=str(root))
    return row


def _up_to_date(path: Path, parent: Path, calibration_sha: str) -> bool:
    with contextlib.suppress(EdgekitError, OSError):
        manifest = read_manifest(path)
        return (path.exists() and manifest.get("parent", {}).get("sha256") == sha256_file(parent)
                and manifest.get("extra", {}).get("calibration", {}).get("pixels_sha256") == calibration_sha)
    return False


class _OrtReader:
    """Feeds calibration images to onnxruntime.quantization the way its examples do."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self.batches = iter([{input_name: images[i:i + batch]} for i in range(0, len(images) - batch + 1, batch)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # part of the reader interface in newer ORT
        pass


def ort_quantize_static_baseline(fp32_onnx: Path, out: Path, calibration, activation: str, label: str) -> Path:
    """onnxruntime.quantization.quantize_static with its defaults except, optionally, the activation type."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    graph_input = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0]
    static = graph_input.type.tensor_type.shape.dim[0].dim_value
    reader = type("Reader", (_OrtReader, CalibrationDataReader), {})(graph_input.name, calibration.images,
                                                                    static or 32)
    kwargs = {} if activation == "default" else {"activation_type": QuantType.QUInt8}
    from .artifacts import atomic_path

    with atomic_path(out) as tmp:
        quantize_static(str(fp32_onnx), str(tmp), reader, **kwargs)
    write_manifest(out, Manifest(
        kind="baseline", format="onnx", precision="int8", parent=parent_ref(fp32_onnx),
        config={"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ (default)",
                "activation_type": "QInt8 (default)" if activation == "default" else "QUInt8",
                "weight_type": "QInt8 (default)", "per_channel": False, "calibrate_method": "MinMax (default)"},
        extra={"baseline": label, "calibration": calibration.manifest_ref()}))
    return out


def tflite_default_int8_baseline(root: Path, out: Path, calibration, label: str) -> Path:
    """The TFLite converter's documented full-integer recipe: Optimize.DEFAULT + a representative dataset."""
    from .formats import keras_twin
    from .model import load_checkpoint

    tf = keras_twin.import_tensorflow()
    model = keras_twin.build_twin(load_checkpoint(root))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([keras_twin.concrete_function(model)], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    images = keras_twin.nchw_to_nhwc(calibration.images)
    converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
    from .artifacts import atomic_write_bytes

    atomic_write_bytes(out, converter.convert())
    write_manifest(out, Manifest(
        kind="baseline", format="tflite", precision="int8", parent=parent_ref(root),
        config={"tool": "tf.lite.TFLiteConverter", "optimizations": ["DEFAULT"],
                "representative_dataset": "calibration images, one per step", "io": "float32 (default)"},
        extra={"baseline": label, "calibration": calibration.manifest_ref()}))
    return out


def make_baselines(artifacts: list[Path], config: BenchConfig,
                   reporter: Reporter = quiet) -> tuple[list[Path], list[dict[str, Any]]]:
    """For each fp32 root among the artifacts' lineages: torch eager, ORT quantize_static (default and
    uint8 activations) of its fp32 ONNX, and the TFLite converter's default full-integer file."""
    made: list[Path] = []
    skipped: list[dict[str, Any]] = []
    lineages = {p: lineage(p) for p in artifacts if p.exists()}
    roots = []
    for lin in lineages.values():
        if lin.root not in roots and _torch_checkpoint(lin.root) is not None:
            roots.append(lin.root)
    out_dir = Path(config.baseline_dir)
    for root in roots:
        made.append(root)  # torch eager fp32
        try:
            ctx = _Context(config, reporter)
            data_config = ctx.data_config_for(Lineage([root]))
            chains = [lin.chain for lin in lineages.values() if lin.root == root]
            calibration, _ = _calibration_for([p for chain in chains for p in chain], data_config, config, reporter)
        except EdgekitError as exc:
            skipped.append(_skip_row("int8 baselines", root, "-", "-", f"no calibration set: {_why(exc)}"))
            continue
        tag = f"{root.stem}-{sha256_file(root)[:8]}"
        fp32_onnx = next((p for p, lin in lineages.items() if len(lin.chain) == 2 and lin.root == root
                          and format_of_path_or_none(p) is FORMATS["onnx"]
                          and (read_manifest(p).get("precision") or "").startswith("fp32")), None)
        for activation, label, suffix in (("default", "stock ORT quantize_static (defaults: QDQ, s8 act.)", "s8"),
                                          ("uint8", "stock ORT quantize_static (QDQ, u8 act.)", "u8")):
            if fp32_onnx is None:
                skipped.append(_skip_row(label, root, "onnx", "onnxruntime",
                                         "no fp32 ONNX export of this root among the artifacts (edgekit export ... "
                                         "--format onnx --precision fp32)"))
                continue
            out = out_dir / f"{tag}-ort-qdq-{suffix}.onnx"
            try:
                if not _up_to_date(out, fp32_onnx, calibration.sha256):
                    reporter.info(f"bench: baseline {label} -> {out}")
                    ort_quantize_static_baseline(fp32_onnx, out, calibration, activation, label)
                made.append(out)
            except Exception as exc:
                skipped.append(_skip_row(label, root, "onnx", "onnxruntime", _why(exc)))
        label = "stock TFLite converter (full-integer defaults)"
        out = out_dir / f"{tag}-tflite-default-int8.tflite"
        try:
            reason = FORMATS["tflite"].unavailable_reason()
        except ImportError as exc:
            reason = f"the TFLite format module is not in this build ({exc})"
        try:
            if reason is None:
                from .formats import keras_twin  # noqa: F401  - the twin is what makes a TFLite file here
        except ImportError as exc:
            reason = f"the Keras twin is not in this build ({exc})"
        if reason is not None:
            skipped.append(_skip_row(label, root, "tflite", "tflite", reason))
            continue
        try:
            if not _up_to_date(out, root, calibration.sha256):
                reporter.info(f"bench: baseline {label} -> {out}")
                tflite_default_int8_baseline(root, out, calibration, label)
            made.append(out)
        except Exception as exc:
            skipped.append(_skip_row(label, root, "tflite", "tflite", _why(exc)))
    return made, skipped


# ---- notes: int8 slower than fp32, with the reason where known --------------------------------


def _float_share(census: dict | None) -> float | None:
    """Share of compute ops left in float, from the format's census (ONNX: convs/gemms as ORT runs
    them after its fusions; TFLite: ops other than the edge QUANTIZE/DEQUANTIZE)."""
    if not isinstance(census, dict):
        return None
    runtime = census.get("runtime")
    if isinstance(runtime, dict) and "float_conv_gemm" in runtime:
        total = runtime.get("integer_conv_gemm", 0) + runtime["float_conv_gemm"]
        return runtime["float_conv_gemm"] / total if total else None
    if isinstance(census.get("float_ops"), dict) and isinstance(census.get("ops_by_type"), dict):
        total = sum(v for k, v in census["ops_by_type"].items() if k not in ("QUANTIZE", "DEQUANTIZE"))
        return sum(census["float_ops"].values()) / total if total else None
    return None


def int8_slowdown_reason(row: dict[str, Any], env: dict[str, Any]) -> str:
    reasons = []
    flags = set(env.get("cpu_flags") or [])
    if not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        reasons.append("this CPU has no VNNI/AMX int8 dot-product instructions, so int8 convolutions are emulated "
                       "with wider multiplies")
    activation = json.dumps(row.get("manifest_config") or {}).lower()
    if row["runtime"] == "onnxruntime" and '"activation_type": "qint8' in activation:
        reasons.append("ONNX Runtime's x86 int8 convolutions are fastest with uint8 activations (u8s8); int8 "
                       "activations take a slower path")
    share = _float_share(row.get("census"))
    if share is not None and share > 0.2:
        reasons.append(f"{share:.0%} of compute ops stay in float, so Quantize/Dequantize pairs add work")
    if _contention_notes(env):
        reasons.insert(0, "the CPU was shared while it ran (see the Shared CPU note); a thread pool that waits for a "
                          "descheduled thread at every op (torch's OpenMP) loses the most; re-run on a quiet machine "
                          "or with fewer threads before drawing conclusions")
    elif row["format"] == "torch":
        reasons.append("torch eager int8 (fbgemm) pays per-op quantize/dequantize and Python dispatch at batch 1")
    return "; ".join(reasons) or "reason not determined from the file and CPU flags"


def _annotate(rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """Compare each int8 row with the fp32 row of the same format and runtime made from the same
    float model (its nearest torch source: the fp32 root, or the pruned checkpoint)."""
    fp32 = {(r["format"], r["runtime"], r["source"]): r for r in rows
            if r["status"] == "ok" and (r["precision"] or "").startswith("fp32")}
    for row in rows:
        if row["status"] != "ok" or "int8" not in (row["precision"] or ""):
            continue
        ref = fp32.get((row["format"], row["runtime"], row["source"]))
        if ref is None or ref["latency_ms"] is None:
            continue
        if row["latency_ms"]["p50"] > ref["latency_ms"]["p50"]:
            row["int8_slower_than_fp32"] = {"fp32_artifact": ref["artifact"], "fp32_p50_ms": ref["latency_ms"]["p50"],
                                            "reason": int8_slowdown_reason(row, env)}


# ---- tables and files --------------------------------------------------------------------------


TABLE_COLUMNS = ["artifact", "runtime", "precision", "acc %", "agree root %", "p50 ms", "p90 ms", "p99 ms",
                 "mean ms (95% CI)", "best img/s (batch)", "size MB", "MMACs", "status"]


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


def _best_throughput(row: dict[str, Any]) -> str:
    best = [(v["images_per_s"], b) for b, v in row.get("throughput", {}).items() if v.get("images_per_s")]
    if not best:
        return ""
    value, batch = max(best)
    return f"{value:,.0f} ({batch})"


def _label(row: dict[str, Any]) -> str:
    name = Path(row["artifact"]).name
    return f"{name} [{row['baseline']}]" if row.get("baseline") else name


def _short(row: dict[str, Any], limit: int = 60) -> str:
    why = row.get("why") or ""
    return f"{row['status']}: {why[:limit]}{'...' if len(why) > limit else ''}"


def table_rows(rows: list[dict[str, Any]], markdown: bool = False) -> list[list[Any]]:
    out = []
    for r in rows:
        lat = r.get("latency_ms") or {}
        ci = lat.get("ci95")
        out.append([
            _label(r), r["runtime"], r.get("precision") or "",
            _fmt(r["accuracy"] and 100 * r["accuracy"], ".2f"),
            _fmt(r["agreement_root"] and 100 * r["agreement_root"], ".2f"),
            _fmt(lat.get("p50"), ".3f"), _fmt(lat.get("p90"), ".3f"), _fmt(lat.get("p99"), ".3f"),
            f"{lat['mean']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if lat else "",
            _best_throughput(r),
            _fmt(r["size_bytes"] and r["size_bytes"] / 1e6, ".3f"),
            _fmt(r["macs"] and r["macs"] / 1e6, ".1f"),
            r["status"] if r["status"] == "ok" else f"{r['status']} (see notes)" if markdown else _short(r),
        ])
    return out


CSV_COLUMNS = ["artifact", "baseline", "format", "runtime", "runner", "kind", "precision", "status", "why",
               "accuracy", "test_images", "agreement_root", "agreement_source", "p50_ms", "p90_ms", "p99_ms",
               "mean_ms", "mean_ci95_low_ms", "mean_ci95_high_ms", "timed_runs", "size_bytes", "params", "macs",
               "load_average_1m", "root", "source"]


def csv_text(run: BenchRun) -> str:
    batches = [str(b) for b in run.protocol.get("batches", [])]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS + [f"images_per_s_b{b}" for b in batches])
    for r in run.rows:
        lat = r.get("latency_ms") or {}
        values = {**r, "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                  "mean_ms": lat.get("mean"), "mean_ci95_low_ms": (lat.get("ci95") or [None])[0],
                  "mean_ci95_high_ms": (lat.get("ci95") or [None, None])[1], "timed_runs": lat.get("runs"),
                  "load_average_1m": (r.get("load_average") or [None])[0]}
        writer.writerow([values.get(c) for c in CSV_COLUMNS] +
                        [(r.get("throughput", {}).get(b) or {}).get("images_per_s") for b in batches])
    return buffer.getvalue()


def markdown_text(run: BenchRun, title: str = "edgekit bench") -> str:
    env, protocol = run.environment, run.protocol
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    gpu = env.get("gpu")
    lines = [f"# {title}", "",
             "## Environment", "",
             markdown_table(["", ""], [
                 ["CPU", env.get("cpu")],
                 ["CPU flags (of interest)", " ".join(env.get("cpu_flags") or []) or "none found"],
                 ["cores (usable)", f"{env.get('cores')} ({env.get('cores_usable')})"],
                 ["threads per runtime", env.get("threads")],
                 ["OS", env.get("os")],
                 ["GPU", f"{gpu['name']} (driver {gpu['driver']})" if gpu else "none"],
                 ["libraries", versions],
                 ["load average (1/5/15 min) at start", env.get("load_average_start")],
                 ["load average at end", env.get("load_average_end")],
             ]),
             "The load average counts every process on the machine. Above ~0 on a machine with "
             f"{env.get('cores')} cores, other work shared the CPU while these numbers were taken: compare rows "
             "within this run (each row's 1-minute load is in the JSON/CSV), not against other machines or runs.", "",
             "## Protocol", "",
             f"- accuracy: the test split of the data each artifact's lineage was trained on "
             f"({'first ' + str(protocol.get('test_limit')) + ' images' if protocol.get('test_limit') else 'all images'});"
             " agreement = top-1 agreement with the fp32 root checkpoint on the same images",
             f"- batch-1 latency: {protocol.get('warmup')} warm-up calls, then at least {protocol.get('runs')} timed "
             f"calls and at least {protocol.get('min_seconds')} s; p50/p90/p99, mean with a bootstrap 95 % CI "
             "(timed calls are not independent, so the CI describes this sample)",
             f"- throughput: batches {protocol.get('batches')}, {protocol.get('sweep_seconds')} s each (at least 3 calls)",
             f"- threads: {protocol.get('threads')} for every runtime (torch.set_num_threads, ONNX Runtime "
             "intra-op threads, TFLite num_threads)",
             "- rows marked [baseline] are what a user would do without edgekit, measured in the same run", "",
             "## Results", "",
             markdown_table(TABLE_COLUMNS, table_rows(run.rows, markdown=True)), ""]
    lines += summary_lines(run.rows)
    sweep = [[_label(r), r["runtime"]] + [_fmt((r["throughput"].get(str(b)) or {}).get("images_per_s"), ",.0f")
                                          for b in protocol.get("batches", [])]
             for r in run.rows if r["status"] == "ok"]
    if sweep:
        lines += ["## Throughput (images/s) by batch size", "",
                  markdown_table(["artifact", "runtime"] + [f"batch {b}" for b in protocol.get("batches", [])], sweep), ""]
    notes = []
    # One note per (runtime, reason) for runtimes missing here, instead of one per file.
    unavailable: dict[tuple[str, str], list[str]] = {}
    lineage_ends: dict[str, None] = {}
    for r in run.rows:
        slow = r.get("int8_slower_than_fp32")
        if slow:
            notes.append(f"- **{_label(r)}** ({r['runtime']}) is int8 but slower than fp32 "
                         f"{Path(slow['fp32_artifact']).name} ({r['latency_ms']['p50']:.3f} ms vs "
                         f"{slow['fp32_p50_ms']:.3f} ms p50): {slow['reason']}.")
        if r["status"] == "unavailable":
            unavailable.setdefault((r["runtime"], r["why"]), []).append(Path(r["artifact"]).name)
        elif r["status"] != "ok":
            notes.append(f"- **{_label(r)}** ({r['runtime']}): {r['status']}: {r['why']}")
        for note in r.get("notes") or []:
            if "lineage stops there" in note:  # the same for every row of a lineage: said once below
                lineage_ends.setdefault(note, None)
                continue
            notes.append(f"- {_label(r)} ({r['runtime']}): {note}")
    notes += [f"- every row of that lineage: {note}" for note in lineage_ends]
    for (runtime, why), names in unavailable.items():
        notes.append(f"- **{runtime}** did not run ({', '.join(names)}): {why}")
    notes = [f"- {note}" for note in run.notes] + _contention_notes(env) + notes
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fp32 root: the fastest artifact within 1 point of its accuracy against the stock paths."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("latency_ms") and r.get("accuracy") is not None]
    out = []
    for root_row in [r for r in ok if r.get("baseline") == "stock torch eager fp32"]:
        family = [r for r in ok if r["root"] == root_row["root"]]
        ours = [r for r in family if not r.get("baseline")]
        # "Within 1 point" inclusive: accuracies are counts over the test split, so compare with a
        # tolerance far below one image rather than trust float rounding at exactly 1.00 pt.
        close = [r for r in ours if r["accuracy"] >= root_row["accuracy"] - 0.01 - 1e-9]
        stock_int8 = [r for r in family if r.get("baseline") and "int8" in (r.get("precision") or "")]
        unpruned_int8 = [r for r in ours if "int8" in (r.get("precision") or "") and r["source"] == root_row["root"]]

        def fastest(candidates):
            return min(candidates, key=lambda r: r["latency_ms"]["p50"]) if candidates else None

        out.append({"root": root_row["root"], "fp32_accuracy": root_row["accuracy"],
                    "torch_eager_p50_ms": root_row["latency_ms"]["p50"], "best_within_1pt": fastest(close),
                    "best_stock_int8": fastest(stock_int8), "best_edgekit_unpruned_int8": fastest(unpruned_int8)})
    return out


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for entry in summary(rows):
        def describe(r):
            return (f"{_label(r)} on {r['runtime']}: {r['latency_ms']['p50']:.3f} ms p50, "
                    f"{100 * r['accuracy']:.2f} %") if r else "none measured"

        best, stock, ours = entry["best_within_1pt"], entry["best_stock_int8"], entry["best_edgekit_unpruned_int8"]
        lines += [f"## Summary for {Path(entry['root']).name} (fp32 accuracy {100 * entry['fp32_accuracy']:.2f} %, "
                  f"torch eager {entry['torch_eager_p50_ms']:.3f} ms p50)", "",
                  f"- fastest edgekit artifact within 1 point of fp32: {describe(best)}",
                  f"- fastest stock int8 (ORT quantize_static / TFLite converter defaults): {describe(stock)}",
                  f"- fastest edgekit int8 of the unpruned model: {describe(ours)}"]
        if best:
            lines.append(f"- speed-up at batch 1: {entry['torch_eager_p50_ms'] / best['latency_ms']['p50']:.1f}x over "
                         "torch eager fp32" + (f", {stock['latency_ms']['p50'] / best['latency_ms']['p50']:.2f}x over "
                                               "the fastest stock int8" if stock else ""))
        if ours and stock:
            lines.append(f"- edgekit unpruned int8 vs fastest stock int8: "
                         f"{stock['latency_ms']['p50'] / ours['latency_ms']['p50']:.2f}x (above 1 = edgekit faster)")
        lines.append("")
    return lines


def _contention_notes(env: dict[str, Any]) -> list[str]:
    """Say when the run asked for more threads than the machine had free: the numbers then measure
    the neighbours as much as the model (OpenMP pools such as torch's suffer most)."""
    loads = [x for x in (env.get("load_average_start"), env.get("load_average_end")) if x]
    cores, threads = env.get("cores_usable") or env.get("cores"), env.get("threads")
    if not loads or not cores or not threads:
        return []
    busiest = max(load[0] for load in loads)
    if busiest + threads <= cores:
        return []
    return [f"- **Shared CPU**: the 1-minute load average reached {busiest:.1f} on {cores} cores while each "
            f"runtime used {threads} threads, so runtimes competed with other processes for cores. Symptoms in "
            "this table: p90/p99 near a scheduler time slice (~4 ms) and, worst, torch eager, whose OpenMP "
            "threads wait for each other at every op when one of them is descheduled (its p50 can be 10-100x "
            "its uncontended value). Compare rows within the run with this in mind, and prefer a quiet machine "
            "or fewer threads for absolute numbers."]


def render(json_path: Path, out: Path | None = None) -> dict[str, Path]:
    """Re-write the CSV, Markdown and PNG (and the JSON) from a bench JSON, e.g. after a report change."""
    data = load_run(json_path)
    run = BenchRun(data["rows"], data["environment"], data["protocol"], notes=data.get("notes", []))
    target = Path(out) if out else Path(json_path).with_suffix("")
    return write_outputs(run, target)


def write_outputs(run: BenchRun, out: Path) -> dict[str, Path]:
    """<out>.json (everything), .csv, .md and the Pareto .png, each with a manifest."""
    from .report import plot_pareto

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: out.with_name(out.name + f".{ext}") for ext in ("json", "csv", "md", "png")}
    atomic_write_text(paths["json"], json.dumps(to_plain(run.to_dict()), indent=2) + "\n")
    atomic_write_text(paths["csv"], csv_text(run))
    atomic_write_text(paths["md"], markdown_text(run, f"edgekit bench: {out.name}"))
    points = [{"label": f"{Path(r['artifact']).name} ({r['runtime']})" + (" [stock]" if r.get("baseline") else ""), "latency_ms": r["latency_ms"]["p50"],
               "accuracy": r["accuracy"], "size_bytes": r["size_bytes"], "baseline": bool(r.get("baseline"))}
              for r in run.rows if r["status"] == "ok" and r.get("latency_ms")]
    plot_pareto(points, paths["png"], title=f"accuracy vs batch-1 p50 latency ({run.environment.get('threads')} threads, "
                                            f"{run.environment.get('cpu')})")
    ok = sum(r["status"] == "ok" for r in run.rows)
    metrics = {"rows": len(run.rows), "ok": ok, "failed": len(run.rows) - ok}
    write_manifest(paths["json"], Manifest(kind="bench", format="json", precision="n/a", config=run.protocol,
                                           seed=run.protocol.get("seed"), metrics=metrics,
                                           extra={"environment": run.environment}))
    for ext in ("csv", "md", "png"):
        write_manifest(paths[ext], Manifest(kind="bench-view", format=ext, precision="n/a",
                                            parent=parent_ref(paths["json"]), config=run.protocol, metrics=metrics))
    return paths


# ---- comparison --------------------------------------------------------------------------------


def load_run(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"bench result not found: {path}", "pass two .json files written by `edgekit bench`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a bench result (invalid JSON)", "pass a .json written by `edgekit bench`") from exc
    if not isinstance(data, dict) or data.get("format") != BENCH_FORMAT:
        raise ConfigError(f"{path} is not an edgekit bench result", "pass a .json written by `edgekit bench`")
    return data


def _row_key(row: dict[str, Any]) -> tuple[str, str]:
    return Path(row["artifact"]).name if row.get("artifact") else "", row.get("runtime") or ""


def compare(a_path: Path, b_path: Path, reporter: Reporter = quiet) -> list[dict[str, Any]]:
    """Per-row deltas B - A, rows matched by artifact file name and runtime."""
    a, b = load_run(a_path), load_run(b_path)
    rows_a = {_row_key(r): r for r in a["rows"]}
    rows_b = {_row_key(r): r for r in b["rows"]}
    result = []
    for key in list(rows_a) + [k for k in rows_b if k not in rows_a]:
        ra, rb = rows_a.get(key), rows_b.get(key)
        entry: dict[str, Any] = {"artifact": key[0], "runtime": key[1]}
        if ra is None or rb is None:
            entry["status"] = "only in " + ("B" if ra is None else "A")
        elif ra["status"] != "ok" or rb["status"] != "ok":
            entry["status"] = f"A {ra['status']}, B {rb['status']}"
        else:
            entry["status"] = "ok"
            la, lb = ra["latency_ms"], rb["latency_ms"]
            entry["accuracy_delta_pt"] = 100 * (rb["accuracy"] - ra["accuracy"])
            entry["p50_a_ms"], entry["p50_b_ms"] = la["p50"], lb["p50"]
            entry["p50_delta_ms"] = lb["p50"] - la["p50"]
            entry["p50_ratio"] = lb["p50"] / la["p50"] if la["p50"] else None
            entry["p99_delta_ms"] = lb["p99"] - la["p99"]
            # Mean CIs that do not overlap are the least a reader should ask before believing a change.
            entry["mean_ci_overlap"] = not (la["ci95"][1] < lb["ci95"][0] or lb["ci95"][1] < la["ci95"][0])
            entry["size_delta_bytes"] = (rb["size_bytes"] or 0) - (ra["size_bytes"] or 0)
        result.append(entry)
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    if env_a.get("cpu") != env_b.get("cpu") or env_a.get("threads") != env_b.get("threads"):
        reporter.info(f"compare: different machines or threads (A: {env_a.get('cpu')}, {env_a.get('threads')} threads; "
                      f"B: {env_b.get('cpu')}, {env_b.get('threads')} threads): latency deltas mix machine and model")
    reporter.table(f"compare: B ({Path(b_path).name}) - A ({Path(a_path).name})",
                   ["artifact", "runtime", "acc Δ pt", "p50 A ms", "p50 B ms", "p50 Δ ms", "B/A", "p99 Δ ms",
                    "CIs overlap", "size Δ bytes", "status"],
                   [[e["artifact"], e["runtime"], _fmt(e.get("accuracy_delta_pt"), "+.2f"), _fmt(e.get("p50_a_ms"), ".3f"),
                     _fmt(e.get("p50_b_ms"), ".3f"), _fmt(e.get("p50_delta_ms"), "+.3f"), _fmt(e.get("p50_ratio"), ".2f"),
                     _fmt(e.get("p99_delta_ms"), "+.3f"), "" if "mean_ci_overlap" not in e else str(e["mean_ci_overlap"]),
                     e.get("size_delta_bytes", ""), e["status"]] for e in result])
    return result
