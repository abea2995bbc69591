"""Classify one image with an edgekit TensorRT engine and TensorRT alone (no edgekit, no torch).

    pip install tensorrt-cu12 "cuda-python>=12,<13" numpy pillow   # on Jetson: JetPack's TensorRT
    python run_tensorrt.py model.engine image.jpg

Written against the TensorRT 10 Python API. Besides TensorRT it needs cuda-python, TensorRT's own
companion for GPU memory (the pair edgekit's tensorrt extra installs). An engine file has no room
for metadata, so edgekit keeps it in the manifest beside the engine (model.engine.manifest.json,
key extra.metadata); copy both. The engine only runs on the TensorRT version and GPU model that
built it. Prints the top-5 classes, one per line: rank, class index, probability, class name.
"""

import json
import sys

import numpy as np
import tensorrt as trt
from PIL import Image

try:
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
except ImportError:
    from cuda import cudart  # older cuda-python 12


def check(result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        sys.exit(f"error: CUDA call failed: {err} -> check the GPU and driver with nvidia-smi")
    return values[0] if len(values) == 1 else values


def read_metadata(engine_path):
    try:
        with open(engine_path + ".manifest.json") as handle:
            return json.load(handle)["extra"]["metadata"]
    except (OSError, KeyError, ValueError):
        sys.exit(f"error: no edgekit metadata in {engine_path}.manifest.json -> copy the manifest beside the engine")


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
    batch = meta["input_shape"][0] or 1  # a static-batch engine takes exactly its batch: pad with zeros
    padded = np.zeros((batch, *pixels.shape), dtype=np.float32)
    padded[0] = pixels
    return padded


def top5(logits, classes):
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:5]
    return [(int(i), float(probabilities[i]), classes[i]) for i in order]


def main(engine_path, image_path):
    meta = read_metadata(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    with open(engine_path, "rb") as handle:
        engine = trt.Runtime(logger).deserialize_cuda_engine(handle.read())
    if engine is None:
        sys.exit("error: TensorRT cannot load the engine -> rebuild it on this device's TensorRT and GPU")
    context = engine.create_execution_context()
    input_name, output_name = meta["input_name"], meta["output_name"]
    input_dtype = trt.nptype(engine.get_tensor_dtype(input_name))
    pixels = np.ascontiguousarray(preprocess(image_path, meta), dtype=input_dtype)
    context.set_input_shape(input_name, pixels.shape)
    output_dtype = trt.nptype(engine.get_tensor_dtype(output_name))
    output = np.empty(tuple(context.get_tensor_shape(output_name)), dtype=output_dtype)
    stream = check(cudart.cudaStreamCreate())
    device_in, device_out = check(cudart.cudaMalloc(pixels.nbytes)), check(cudart.cudaMalloc(output.nbytes))
    try:
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpy(device_in, pixels.ctypes.data, pixels.nbytes, to_device))
        context.set_tensor_address(input_name, int(device_in))
        context.set_tensor_address(output_name, int(device_out))
        if not context.execute_async_v3(int(stream)):
            sys.exit("error: TensorRT execution failed -> rebuild the engine on this device")
        check(cudart.cudaStreamSynchronize(stream))
        check(cudart.cudaMemcpy(output.ctypes.data, device_out, output.nbytes, to_host))
    finally:
        cudart.cudaFree(device_in)
        cudart.cudaFree(device_out)
        cudart.cudaStreamDestroy(stream)
    for rank, (index, probability, name) in enumerate(top5(output[0].astype(np.float32), meta["classes"]), 1):
        print(f"{rank} {index} {probability:.4f} {name}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python run_tensorrt.py MODEL.engine IMAGE.jpg")
    main(sys.argv[1], sys.argv[2])
