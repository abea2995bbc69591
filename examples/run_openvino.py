"""Classify one image with an edgekit ONNX file and OpenVINO alone (no edgekit, no torch).

    pip install openvino numpy pillow
    python run_openvino.py model.onnx image.jpg

OpenVINO reads the .onnx file directly; edgekit's metadata_props appear in the model's runtime
info under "framework". Prints the top-5 classes, one per line: rank, class index, probability,
class name.
"""

import json
import sys

import numpy as np
import openvino as ov
from PIL import Image

FIELDS = ("schema", "classes", "input_layout", "input_shape", "input_dtype", "color", "pixel_scale")


def read_metadata(model):
    if not model.has_rt_info(["framework", "schema"]):
        sys.exit("error: this model carries no edgekit metadata -> re-export it with `edgekit export`")
    return {key: json.loads(model.get_rt_info(["framework", key]).astype(str)) for key in FIELDS}


def preprocess(path, meta):
    """RGB, resized (bilinear) to the input size, uint8 pixels scaled to floats, in the file's layout."""
    nchw = meta["input_layout"] == "NCHW"
    height, width = meta["input_shape"][2:4] if nchw else meta["input_shape"][1:3]
    image = Image.open(path).convert(meta["color"])
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) * np.float32(meta["pixel_scale"])  # HWC; the model normalizes itself
    if nchw:
        pixels = pixels.transpose(2, 0, 1)
    batch = np.zeros((meta["input_shape"][0] or 1, *pixels.shape), dtype=np.dtype(meta["input_dtype"]))
    batch[0] = pixels  # a static-batch file takes exactly its batch: the rest stays zeros
    return batch


def top5(logits, classes):
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:5]
    return [(int(i), float(probabilities[i]), classes[i]) for i in order]


def main(model_path, image_path):
    core = ov.Core()
    model = core.read_model(model_path)
    meta = read_metadata(model)
    compiled = core.compile_model(model, "CPU")
    logits = np.asarray(compiled(preprocess(image_path, meta))[0])[0]
    for rank, (index, probability, name) in enumerate(top5(logits, meta["classes"]), 1):
        print(f"{rank} {index} {probability:.4f} {name}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python run_openvino.py MODEL.onnx IMAGE.jpg")
    main(sys.argv[1], sys.argv[2])
