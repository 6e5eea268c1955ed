"""Benchmark models built with OpenVINO's Python API (random weights; nothing is downloaded)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops

_rng = np.random.default_rng(0)


def _conv(x, in_ch: int, out_ch: int, k: int, stride: int = 1, relu: bool = True):
    w = (_rng.standard_normal((out_ch, in_ch, k, k)) * np.sqrt(2.0 / (in_ch * k * k))).astype(np.float32)
    pad = k // 2
    y = ops.convolution(x, ops.constant(w), [stride, stride], [pad, pad], [pad, pad], [1, 1])
    y = ops.add(y, ops.constant(np.zeros((1, out_ch, 1, 1), np.float32)))  # folded batch-norm bias
    return ops.relu(y) if relu else y


def _bottleneck(x, in_ch: int, width: int, stride: int):
    out_ch = width * 4
    y = _conv(x, in_ch, width, 1)
    y = _conv(y, width, width, 3, stride)
    y = _conv(y, width, out_ch, 1, relu=False)
    shortcut = _conv(x, in_ch, out_ch, 1, stride, relu=False) if (stride != 1 or in_ch != out_ch) else x
    return ops.relu(ops.add(y, shortcut)), out_ch


def resnet50_shaped(batch: int = -1) -> ov.Model:
    """ResNet-50's topology (about 4 GFLOP per 224x224 image) with random weights: a compute-bound model."""
    x = ops.parameter([batch, 3, 224, 224], ov.Type.f32, name="input")
    x.output(0).get_tensor().set_names({"input"})
    y = _conv(x, 3, 64, 7, 2)
    y = ops.max_pool(y, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3]).output(0)
    channels = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            y, channels = _bottleneck(y, channels, width, stride if i == 0 else 1)
    y = ops.reduce_mean(y, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    w = (_rng.standard_normal((channels, 1000)) * 0.01).astype(np.float32)
    logits = ops.matmul(y, ops.constant(w), False, False)
    probs = ops.softmax(logits, 1)
    probs.output(0).get_tensor().set_names({"probs"})
    return ov.Model([probs.output(0)], [x], "resnet50_shaped")


def segmentation_shaped(batch: int = -1, size: int = 256, classes: int = 21) -> ov.Model:
    """A segmentation-shaped net: a light encoder, then per-pixel class scores upsampled to the input size
    ([batch, 21, 256, 256] FP32, 5.5 MB an image): the output, not the compute, is what costs."""
    x = ops.parameter([batch, 3, size, size], ov.Type.f32, name="image")
    x.output(0).get_tensor().set_names({"image"})
    y = _conv(x, 3, 32, 3, 2)
    y = _conv(y, 32, 64, 3, 2)
    y = _conv(y, 64, 64, 3)
    y = _conv(y, 64, classes, 1, relu=False)
    target = ops.constant(np.array([size, size], np.int64))
    axes = ops.constant(np.array([2, 3], np.int64))
    scores = ops.interpolate(y, target, "linear", "sizes", axes=axes)
    scores.output(0).get_tensor().set_names({"scores"})
    return ov.Model([scores.output(0)], [x], "segmentation_shaped")


# The PP-OCRv4 text-detection model ships inside this wheel; pinned so runs are repeatable.
PPOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
PPOCR_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"


def fetch_ppocr_det(cache: Path) -> Path:
    """PP-OCRv4 detection ONNX from the rapidocr-onnxruntime wheel (pip download --no-deps, cached).

    Raises RuntimeError with pip's message when the wheel cannot be downloaded.
    """
    target = cache / "models" / "ppocr_det" / "1" / "model.onnx"
    if target.exists():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = list(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
    if not found:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), PPOCR_WHEEL],
            capture_output=True,
            text=True,
            timeout=600,
        )
        found = list(wheels.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if not found:
            raise RuntimeError(f"cannot download {PPOCR_WHEEL}: {result.stderr.strip()[-500:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as wheel:
        target.write_bytes(wheel.read(PPOCR_MEMBER))
    return target
