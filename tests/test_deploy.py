"""Deploying a file: the metadata every export carries, read back with each runtime's own API (not
edgekit's), the standalone runners in examples/ run in a subprocess against edgekit's runner,
--int8-io, --dynamic-batch and --bundle end to end through the CLI and the parity gate.

The files are exported once per module (each export costs seconds on two cores) and shared.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekit.artifacts import read_manifest, sha256_file
from edgekit.calibrate import make_calibration, save_calibration
from edgekit.cli import app
from edgekit.config import ExportOptions
from edgekit.data import _decode
from edgekit.errors import ConfigError, OutputError, UnsupportedError
from edgekit.export import PARITY_BATCH, export_artifact
from edgekit.formats import FORMATS, onnx as onnx_format
from edgekit.formats.metadata import SCHEMA, TFLITE_METADATA_NAME, DeployMetadata
from edgekit.model import load_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow / LiteRT not installed (pip install 'edgekit[tflite]')")
cli = CliRunner()


def invoke(*args):
    result = cli.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def source(tiny_trained) -> Path:
    return Path(tiny_trained.checkpoint)


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory, tiny_data, tiny_data_config):
    return save_calibration(make_calibration(tiny_data, tiny_data_config, size=64, seed=0),
                            tmp_path_factory.mktemp("cal") / "cal.json")


@pytest.fixture(scope="module")
def onnx_dynamic(source, calibration_file, tmp_path_factory):
    """Dynamic-batch ONNX in every precision, each through the parity gate."""
    out = tmp_path_factory.mktemp("onnx")
    options = ExportOptions(dynamic_batch=True, calibration=str(calibration_file), parity_images=64, threads=1)
    return {p: export_artifact(source, "onnx", p, out / f"dyn.{p}.onnx", options) for p in ("fp32", "fp16", "int8")}


@pytest.fixture(scope="module")
def tflite_int8_io(source, calibration_file, tmp_path_factory) -> Path:
    """`edgekit export --int8-io` from the CLI: the file an integer-only device needs."""
    out = tmp_path_factory.mktemp("tflite") / "int8io.tflite"
    result = invoke("export", source, "--target", "tflite", "--precision", "int8", "--int8-io",
                    "--calibration", calibration_file, "--parity-images", 64, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def jpegs(tiny_data, tmp_path_factory) -> list[Path]:
    """Real JPEGs of synthetic test images: one at the model's 32x32, one larger (the runners resize it)."""
    out = tmp_path_factory.mktemp("jpeg")
    paths = []
    for i, size in ((0, None), (5, (48, 40))):
        image = Image.fromarray(tiny_data.test_x[i].numpy().transpose(1, 2, 0))
        if size:
            image = image.resize(size, Image.BICUBIC)
        paths.append(out / f"image{i}.jpg")
        image.save(paths[-1], quality=92)
    return paths


def check_common(meta: dict, source: Path, tiny_data) -> None:
    spec = load_checkpoint(source).spec
    assert meta["schema"] == SCHEMA
    assert meta["classes"] == list(tiny_data.classes)
    assert meta["pixel_scale"] == pytest.approx(1 / 255) and meta["pixel_range"] == [0.0, 1.0]
    assert meta["color"] == "RGB" and meta["resize"] == "bilinear" and meta["normalized_inside"] is True
    assert meta["mean"] == pytest.approx(list(spec.mean)) and meta["std"] == pytest.approx(list(spec.std))
    assert meta["source_sha256"] == sha256_file(source) and meta["edgekit_version"]


# ---- metadata, read with each runtime's own API ---------------------------------------------------


def test_onnx_metadata_through_onnxruntime(onnx_dynamic, source, tiny_data):
    import onnxruntime as ort

    for precision, result in onnx_dynamic.items():
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        meta = {k: json.loads(v) for k, v in props.items() if k in DeployMetadata.__dataclass_fields__}
        check_common(meta, source, tiny_data)
        assert meta["input_layout"] == "NCHW" and meta["input_shape"] == [None, 3, 32, 32]
        assert meta["input_dtype"] == "float32" and meta["input_quantization"] is None  # fp16/QDQ keep float I/O
        assert meta["dynamic_batch"] is True and meta["precision"] == precision and meta["format"] == "onnx"
        assert meta["input_name"] == session.get_inputs()[0].name
        manifest = read_manifest(result.path)
        # written before the gate and the hash: the manifest describes the final bytes
        assert manifest["sha256"] == sha256_file(result.path)
        assert manifest["parent"]["sha256"] == meta["source_sha256"]
        assert manifest["extra"]["metadata"] == meta


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (pip install 'edgekit[openvino]')")
def test_onnx_metadata_through_openvino(onnx_dynamic):
    import openvino as ov

    model = ov.Core().read_model(str(onnx_dynamic["fp32"].path))
    classes = json.loads(model.get_rt_info(["framework", "classes"]).astype(str))
    assert classes == onnx_dynamic["fp32"].metadata.classes


def test_dynamic_batch_every_onnx_precision_runs_any_batch(onnx_dynamic, tiny_data):
    x = tiny_data.test_x[:7].float().div(255).numpy()
    for precision, result in onnx_dynamic.items():
        manifest = read_manifest(result.path)
        assert manifest["config"]["options"]["dynamic_batch"] is True
        assert manifest["config"]["parity_batch"] == PARITY_BATCH > 1  # the gate fed it batches of 64
        runner = onnx_format.load_runner(result.path)
        assert runner.fixed_batch is None, precision
        whole = runner.predict(x)
        assert whole.shape == (7, len(tiny_data.classes))
        one_by_one = np.concatenate([runner.predict(x[i:i + 1]) for i in range(7)])
        assert np.allclose(whole, one_by_one, atol=1e-4), precision


def test_the_gate_runs_a_dynamic_file_at_a_batch_above_one(source, tmp_path, monkeypatch):
    seen = []
    real_predict = onnx_format.OnnxRunner.predict

    def recording_predict(self, batch):
        seen.append(len(batch))
        return real_predict(self, batch)

    monkeypatch.setattr(onnx_format.OnnxRunner, "predict", recording_predict)
    export_artifact(source, "onnx", "fp32", tmp_path / "d.onnx", ExportOptions(dynamic_batch=True, parity_images=70))
    assert seen == [PARITY_BATCH, 70 - PARITY_BATCH]


def test_dynamic_batch_qdq_from_an_int8_artifact(source, calibration_file, tmp_path, tiny_data):
    from edgekit.config import CalibMethod, QuantizeConfig, QuantMode
    from edgekit.quantize import quantize_checkpoint

    int8 = tmp_path / "int8.pt"
    quantize_checkpoint(source, QuantizeConfig(mode=QuantMode.static, method=CalibMethod.minmax, export_onnx=False,
                                               calibration=str(calibration_file), latency_runs=5), int8, data=tiny_data)
    result = export_artifact(int8, "onnx", "int8", tmp_path / "int8.onnx",
                             ExportOptions(dynamic_batch=True, calibration=str(calibration_file), parity_images=64))
    assert onnx_format.load_runner(result.path).fixed_batch is None
    assert result.metadata.input_shape == [None, 3, 32, 32] and result.metadata.source_sha256 == sha256_file(int8)


@needs_tf
def test_tflite_int8_io_metadata_through_the_flatbuffer_and_interpreter(tflite_int8_io, source, tiny_data):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.formats import tflite

    buffer = tflite_int8_io.read_bytes()
    model = schema.Model.GetRootAs(buffer, 0)
    entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    meta = json.loads(model.Buffers(entries[TFLITE_METADATA_NAME.encode()]).DataAsNumpy().tobytes())
    check_common(meta, source, tiny_data)
    assert meta["input_layout"] == "NHWC" and meta["input_shape"] == [1, 32, 32, 3]
    assert meta["input_dtype"] == "int8" and meta["output_dtype"] == "int8"
    interpreter = Interpreter(model_path=str(tflite_int8_io))
    for quant, details in ((meta["input_quantization"], interpreter.get_input_details()[0]),
                           (meta["output_quantization"], interpreter.get_output_details()[0])):
        scale, zero_point = details["quantization"]
        assert quant["scale"] == pytest.approx(scale) and quant["zero_point"] == zero_point
    assert tflite.read_metadata(tflite_int8_io).to_dict() == meta  # what `edgekit info` shows
    manifest = read_manifest(tflite_int8_io)
    assert manifest["sha256"] == sha256_file(tflite_int8_io) and manifest["metrics"]["census"]["io_dtypes"] == \
        {"inputs": ["int8"], "outputs": ["int8"]}
    assert manifest["config"]["options"]["int8_io"] is True


@needs_tf
def test_savedmodel_metadata_through_tensorflow(source, tmp_path, tiny_data):
    import tensorflow as tf

    from edgekit.formats import savedmodel

    result = export_artifact(source, "savedmodel", "fp32", tmp_path / "m.savedmodel",
                             ExportOptions(dynamic_batch=True, parity_images=32, threads=1))
    loaded = tf.saved_model.load(str(result.path))
    meta = json.loads(loaded.signatures["edgekit_metadata"]()["metadata"].numpy())
    check_common(meta, source, tiny_data)
    assert meta["input_layout"] == "NHWC" and meta["input_shape"] == [None, 32, 32, 3]
    assert json.loads(Path(loaded.edgekit_metadata_file.asset_path.numpy().decode()).read_text()) == meta
    assert read_manifest(result.path)["sha256"] == sha256_file(result.path)
    assert savedmodel.read_metadata(result.path).to_dict() == meta


def test_info_reads_the_metadata_from_the_file_alone(onnx_dynamic, tmp_path, tiny_data):
    alone = tmp_path / "copied.onnx"
    shutil.copyfile(onnx_dynamic["int8"].path, alone)  # no manifest beside it
    result = invoke("info", alone)
    assert result.exit_code == 0, result.output
    assert tiny_data.classes[0] in result.output and "NCHW" in result.output and "normalized inside" in result.output


def test_int8_io_and_dynamic_batch_misuse_is_one_line(source, calibration_file, tmp_path):
    with pytest.raises(ConfigError, match="--int8-io does not apply to onnx"):
        export_artifact(source, "onnx", "int8", tmp_path / "x.onnx",
                        ExportOptions(int8_io=True, calibration=str(calibration_file)))
    result = invoke("export", source, "--target", "onnx", "--int8-io", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "--int8-io does not apply to onnx" in result.output
    if HAS_TF:
        result = invoke("export", source, "--target", "tflite", "--int8-io", "--out", tmp_path / "x.tflite")
        assert result.exit_code == 2 and "--int8-io needs --precision int8" in result.output
    result = invoke("export", source, "--target", "onnx", "--batch", 4, "--dynamic-batch", "--out", tmp_path / "y.onnx")
    assert result.exit_code == 2 and "exclude each other" in result.output


# ---- the standalone runners --------------------------------------------------------------------

# What each script may import besides the standard library's json and sys: its runtime, numpy, Pillow.
# TensorRT needs cuda-python for GPU memory: the pair edgekit's tensorrt extra installs.
ALLOWED = {"run_onnxruntime.py": {"onnxruntime"}, "run_tflite.py": {"ai_edge_litert"},
           "run_openvino.py": {"openvino"}, "run_tensorrt.py": {"tensorrt", "cuda"}}


def test_every_table_example_exists_and_imports_only_its_runtime_numpy_and_pillow():
    listed = {name for fmt in FORMATS.values() for name in fmt.examples}
    assert listed == set(ALLOWED) and {p.name for p in EXAMPLES.glob("run_*.py")} == listed
    for name, runtime in ALLOWED.items():
        tree = ast.parse((EXAMPLES / name).read_text())
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                roots.add((node.module or "").split(".")[0])
        assert roots <= {"json", "sys", "numpy", "PIL"} | runtime, (name, roots)
        assert runtime & roots, name


def top5_of_script(script: str, model: Path, image: Path) -> list[tuple[int, float]]:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), str(model), str(image)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split(maxsplit=3) for line in done.stdout.strip().splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    return [(int(r[1]), float(r[2])) for r in rows]


def top5_of_edgekit(runtime_module, model: Path, image: Path) -> list[tuple[int, float]]:
    """edgekit's own runner of the same file, on the image decoded as edgekit's data loader does."""
    pixels = _decode(image)[None].astype(np.float32) / 255.0
    logits = runtime_module.load_runner(model).predict(pixels)[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    return [(int(i), float(probabilities[i])) for i in np.argsort(-probabilities, kind="stable")[:5]]


def assert_same_answer(script_top5, edgekit_top5) -> None:
    assert [i for i, _ in script_top5] == [i for i, _ in edgekit_top5]
    assert [p for _, p in script_top5] == pytest.approx([p for _, p in edgekit_top5], abs=2e-4)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_example_answers_as_edgekit(onnx_dynamic, jpegs, precision):
    path = onnx_dynamic[precision].path
    for image in jpegs:
        assert_same_answer(top5_of_script("run_onnxruntime.py", path, image), top5_of_edgekit(onnx_format, path, image))


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (pip install 'edgekit[openvino]')")
def test_openvino_example_answers_as_edgekit(onnx_dynamic, jpegs):
    from edgekit.formats import openvino

    path = onnx_dynamic["fp32"].path
    for image in jpegs:
        assert_same_answer(top5_of_script("run_openvino.py", path, image), top5_of_edgekit(openvino, path, image))


@needs_tf
def test_tflite_example_answers_as_edgekit_with_int8_io(tflite_int8_io, jpegs):
    from edgekit.formats import tflite

    for image in jpegs:
        assert_same_answer(top5_of_script("run_tflite.py", tflite_int8_io, image),
                           top5_of_edgekit(tflite, tflite_int8_io, image))


def _script_functions(script: str, names: tuple[str, ...]) -> dict:
    """Functions of an example script compiled without its module-level imports, so the parts that do
    not touch the runtime run here even where that runtime (TensorRT, a GPU) is not."""
    tree = ast.parse((EXAMPLES / script).read_text())
    tree.body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {node.name for node in tree.body} == set(names), script
    namespace = {"json": json, "sys": sys, "np": np, "Image": Image}
    exec(compile(tree, str(EXAMPLES / script), "exec"), namespace)
    return namespace


def test_tensorrt_example_reads_the_manifest_and_feeds_what_onnxruntime_is_fed(onnx_dynamic, jpegs, tmp_path):
    """An engine has no room for metadata, so run_tensorrt.py reads it from the manifest beside the
    engine. Without TensorRT here, its own reading, preprocessing and top-5 run against the ONNX
    runner's on the same metadata: a script that fed the engine other pixels than the ONNX file gets,
    or ranked the classes differently, fails here, not on a device."""
    trt = _script_functions("run_tensorrt.py", ("read_metadata", "preprocess", "top5"))
    ort_script = _script_functions("run_onnxruntime.py", ("preprocess", "top5"))
    engine = tmp_path / "model.engine"  # the manifest is all read_metadata opens
    shutil.copyfile(str(onnx_dynamic["fp32"].path) + ".manifest.json", str(engine) + ".manifest.json")
    meta = trt["read_metadata"](str(engine))
    assert meta == read_manifest(onnx_dynamic["fp32"].path)["extra"]["metadata"]
    for image in jpegs:
        pixels = trt["preprocess"](image, meta)
        assert pixels.dtype == np.float32 and pixels.shape == (1, 3, 32, 32)  # dynamic batch: one image
        np.testing.assert_array_equal(pixels, ort_script["preprocess"](image, meta))
        logits = onnx_format.load_runner(onnx_dynamic["fp32"].path).predict(pixels)[0]
        assert trt["top5"](logits, meta["classes"]) == ort_script["top5"](logits, meta["classes"])
        assert [i for i, _, _ in trt["top5"](logits, meta["classes"])] == \
            [i for i, _ in top5_of_edgekit(onnx_format, onnx_dynamic["fp32"].path, image)]
    with pytest.raises(SystemExit, match="copy the manifest beside the engine"):
        trt["read_metadata"](str(tmp_path / "alone.engine"))


# ---- --bundle ------------------------------------------------------------------------------------


@needs_tf
def test_bundle_holds_what_a_device_needs_and_its_runner_works(source, calibration_file, tmp_path, jpegs, tiny_data):
    bundle = tmp_path / "deploy" / "pi"
    result = invoke("export", source, "--target", "tflite", "--precision", "int8", "--int8-io",
                    "--calibration", calibration_file, "--parity-images", 32, "--bundle", bundle)
    assert result.exit_code == 0, result.output
    names = {p.name for p in bundle.iterdir()}
    assert names == {f"{source.stem}.int8.tflite", f"{source.stem}.int8.tflite.manifest.json",
                     "labels.txt", "run_tflite.py", "README.txt", "edgekit-bundle.json"}
    assert (bundle / "labels.txt").read_text().splitlines() == list(tiny_data.classes)
    assert (bundle / "run_tflite.py").read_bytes() == (EXAMPLES / "run_tflite.py").read_bytes()
    assert f"python run_tflite.py {source.stem}.int8.tflite IMAGE.jpg" in (bundle / "README.txt").read_text()
    model = bundle / f"{source.stem}.int8.tflite"
    assert read_manifest(model)["sha256"] == sha256_file(model)
    # the bundle's own copy of the runner, run from inside the bundle
    done = subprocess.run([sys.executable, "run_tflite.py", model.name, str(jpegs[0])], cwd=bundle,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5, done.stderr
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_bundle_refuses_a_foreign_folder_and_a_format_without_runner(source, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not edgekit's")
    result = invoke("export", source, "--target", "onnx", "--bundle", foreign)
    assert result.exit_code == 1 and "not an edgekit bundle" in result.output
    assert (foreign / "holiday.jpg").read_bytes() == b"not edgekit's"
    result = invoke("export", source, "--target", "savedmodel", "--bundle", tmp_path / "sm")
    assert result.exit_code == 1 and "no standalone runner for savedmodel" in result.output
    result = invoke("export", source, "--target", "onnx", "--bundle", tmp_path / "b", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_an_onnx_bundle_replaces_its_earlier_self_and_carries_both_runners(source, tmp_path):
    bundle = tmp_path / "jetson"
    for _ in range(2):
        result = invoke("export", source, "--target", "onnx", "--dynamic-batch", "--parity-images", 16,
                        "--bundle", bundle)
        assert result.exit_code == 0, result.output
    assert {"run_onnxruntime.py", "run_openvino.py", "labels.txt"} <= {p.name for p in bundle.iterdir()}
    marker = json.loads((bundle / "edgekit-bundle.json").read_text())
    assert marker["kind"] == "bundle" and marker["runners"] == ["run_onnxruntime.py", "run_openvino.py"]


def test_bundle_errors_are_typed():
    from edgekit.bundle import example_scripts, export_bundle

    with pytest.raises(UnsupportedError):
        example_scripts("savedmodel")
    with pytest.raises(OutputError, match="inside the bundle"):  # refused before any export
        export_bundle(Path(__file__), "onnx", "fp32", Path(__file__).parent)


def test_a_failed_bundle_leaves_the_old_one_and_no_staging(source, tmp_path, monkeypatch):
    import edgekit.bundle as bundle_module
    from edgekit.errors import ParityError

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "edgekit-bundle.json").write_text('{"kind": "bundle"}')

    def refused(*args, **kwargs):
        raise ParityError("onnx fp32 export fails the parity gate", "re-run with --debug-parity")

    monkeypatch.setattr(bundle_module, "export_artifact", refused)
    with pytest.raises(ParityError):
        bundle_module.export_bundle(source, "onnx", "fp32", bundle)
    assert [p.name for p in bundle.iterdir()] == ["edgekit-bundle.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
