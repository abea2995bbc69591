"""Classify one image with an edgekit .tflite file and LiteRT alone (no edgekit, no TensorFlow).

    pip install ai-edge-litert numpy pillow
    python run_tflite.py model.tflite image.jpg

The file says how it wants its input: edgekit writes a JSON record into the flatbuffer's own
Model.metadata list (entry "edgekit"), read here with LiteRT's schema. An integer-I/O file
(`edgekit export --int8-io`) takes int8 pixels: q = round(x / scale) + zero_point of the
[0, 1] floats, and gives int8 logits: (q - zero_point) * scale. Prints the top-5 classes, one per
line: rank, class index, probability, class name.
"""

import json
import sys

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


def read_metadata(model_path):
    with open(model_path, "rb") as handle:
        buffer = handle.read()
    model = schema.Model.GetRootAs(buffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"edgekit":
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    sys.exit("error: this .tflite file carries no edgekit metadata -> re-export it with `edgekit export`")


def preprocess(path, meta):
    """RGB, resized (bilinear) to the input size, uint8 pixels scaled to floats, in the file's layout."""
    nhwc = meta["input_layout"] == "NHWC"
    height, width = meta["input_shape"][1:3] if nhwc else meta["input_shape"][2:4]
    image = Image.open(path).convert(meta["color"])
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) * np.float32(meta["pixel_scale"])  # HWC; the model normalizes itself
    if not nhwc:
        pixels = pixels.transpose(2, 0, 1)
    pixels = pixels[None]
    quant = meta.get("input_quantization")
    if quant:  # integer input: quantize the [0, 1] floats as the file's input tensor says
        info = np.iinfo(meta["input_dtype"])
        pixels = np.clip(np.round(pixels / quant["scale"]) + quant["zero_point"], info.min, info.max)
    return np.ascontiguousarray(pixels, dtype=np.dtype(meta["input_dtype"]))


def top5(logits, classes):
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:5]
    return [(int(i), float(probabilities[i]), classes[i]) for i in order]


def main(model_path, image_path):
    meta = read_metadata(model_path)
    interpreter = Interpreter(model_path=model_path)
    pixels = preprocess(image_path, meta)
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, list(pixels.shape), strict=False)  # any batch dimension
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, pixels)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].astype(np.float32)
    quant = meta.get("output_quantization")
    if quant:  # integer output: back to float logits
        logits = (logits - quant["zero_point"]) * quant["scale"]
    for rank, (index, probability, name) in enumerate(top5(logits, meta["classes"]), 1):
        print(f"{rank} {index} {probability:.4f} {name}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python run_tflite.py MODEL.tflite IMAGE.jpg")
    main(sys.argv[1], sys.argv[2])
