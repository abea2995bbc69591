"""Classify one image with an edgekit ONNX file and ONNX Runtime alone (no edgekit, no torch).

    pip install onnxruntime numpy pillow
    python run_onnxruntime.py model.onnx image.jpg

The file says how it wants its input (edgekit's metadata_props: class names, layout, shape,
pixel scale); this script only follows it. Prints the top-5 classes, one per line:
rank, class index, probability, class name.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def read_metadata(session):
    props = session.get_modelmeta().custom_metadata_map
    if "schema" not in props:
        sys.exit("error: this ONNX file carries no edgekit metadata -> re-export it with `edgekit export`")
    meta = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)  # edgekit's values are JSON; other tools' props may not be
        except ValueError:
            pass
    return meta


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
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = read_metadata(session)
    logits = session.run([meta["output_name"]], {meta["input_name"]: preprocess(image_path, meta)})[0][0]
    for rank, (index, probability, name) in enumerate(top5(logits, meta["classes"]), 1):
        print(f"{rank} {index} {probability:.4f} {name}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python run_onnxruntime.py MODEL.onnx IMAGE.jpg")
    main(sys.argv[1], sys.argv[2])
