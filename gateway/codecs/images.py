"""Encoded image inputs (JPEG, PNG, anything OpenCV reads), decoded the way OVMS does.

A request input of datatype BYTES and shape [N], each element one encoded image, sent to a model input
that is not BYTES, of rank 4 and layout N...HWC (e.g. configured `--layout NHWC:NCHW`), is decoded here:
OpenCV's `imdecode(IMREAD_UNCHANGED)` (BGR channel order, a grey image has one channel), the channel
count checked against C, the pixels converted to the input's element type without scaling (that is what
`--mean`/`--scale` are for), then resized (bilinear, as cv::resize) to the model's H and W: a static
dimension is the size, a ranged one clamps the image's size to its nearest bound, and a fully dynamic one
takes the image's size, so that all images of the request must then share it. N must fit the model's
batch dimension. Every failure is INVALID_ARGUMENT naming the input and the image.

OpenCV is OVMS's decoder (the same decode, BGR order and bilinear resize, so results match OVMS's to the
pixel) and releases the GIL in imdecode and resize. Images are decoded on a pool of threads off the event
loop (one per 4 cores: see decoder_threads); the decoded batch is the array OpenVINO receives (one image:
the decoder's own array; several: each resized or copied once into the batch array). Why:
docs/design/image-decoding.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from gateway.core.datatypes import BY_NAME
from gateway.core.errors import InvalidArgument
from gateway.core.records import TensorSpec

# The pool parallelises across images; OpenCV's own threads inside one small resize would only contend
# with it and with OpenVINO's streams.
cv2.setNumThreads(1)

# Element types OpenCV converts to (cv::Mat depths), by the protocol's datatype names.
_CONVERTIBLE = {"UINT8", "INT8", "UINT16", "INT16", "INT32", "FP16", "FP32", "FP64"}


@dataclass(frozen=True, slots=True)
class ImageInput:
    """How one model input takes encoded images (see the module's docstring)."""

    name: str
    dtype: np.dtype
    batch: tuple[int, int]  # N's inclusive bounds, high -1 = unbounded
    height: tuple[int, int]
    width: tuple[int, int]
    channels: int  # -1 = any
    resize: bool  # False when H or W is fully dynamic: images keep their size and must share it
    layout_set: bool  # False: the model names no layout, so N...HWC is assumed (as OVMS does)

    def target_size(self, rows: int, cols: int) -> tuple[int, int]:
        """The (height, width) an image of rows x cols is resized to."""
        return _clamp(rows, self.height), _clamp(cols, self.width)


def _clamp(size: int, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if size < low:
        return low
    if high >= 0 and size > high:
        return high
    return size


def _dynamic(bounds: tuple[int, int]) -> bool:
    return bounds[0] <= 0 and bounds[1] < 0


def _layout_fits(layout: str, rank: int) -> bool:
    """Whether an OpenVINO layout ('[N,H,W,C]', '[...]', ...) is compatible with N...HWC at this rank."""
    letters = [part.strip() for part in layout.strip("[]").split(",") if part.strip()]
    if not letters or letters == ["..."]:
        return True  # no layout: OVMS reads it as N..., which fits
    if "..." in letters:
        at = letters.index("...")
        letters = letters[:at] + ["?"] * (rank - len(letters) + 1) + letters[at + 1 :]
    if len(letters) != rank:
        return False
    expected = {"N": 0, "H": rank - 3, "W": rank - 2, "C": rank - 1}
    return all(expected.get(letter, i) == i or letter == "?" for i, letter in enumerate(letters))


def image_input(spec: TensorSpec, bounds, layout: str) -> ImageInput | str:
    """How `spec` takes encoded images, or why it does not (the message a client gets if it sends them)."""
    if spec.datatype == "BYTES":
        return f"input '{spec.name}' takes BYTES itself"
    if len(spec.shape) != 4:
        return f"input '{spec.name}' has shape {list(spec.shape)}: encoded images need a rank-4 N...HWC input"
    if not _layout_fits(layout, 4):
        return (
            f"input '{spec.name}' has layout {layout}: encoded images need N...HWC; configure it, e.g. "
            f'--layout NHWC:NCHW (or "layout": "NHWC:NCHW" in config.json) for an NCHW model'
        )
    if spec.datatype not in _CONVERTIBLE:
        return f"input '{spec.name}' is {spec.datatype}, which decoded images cannot be converted to"
    channel_bounds = bounds[3]
    channels = channel_bounds[0] if channel_bounds[0] == channel_bounds[1] else -1
    return ImageInput(
        name=spec.name,
        dtype=BY_NAME[spec.datatype].numpy,
        batch=bounds[0],
        height=bounds[1],
        width=bounds[2],
        channels=channels,
        resize=not (_dynamic(bounds[1]) or _dynamic(bounds[2])),
        layout_set=layout.strip("[]").strip() not in ("", "..."),
    )


_pool: ThreadPoolExecutor | None = None


def decoder_threads(cores: int | None = None) -> int:
    """One decoder thread per 4 cores, at least one: decoding is a small part of a vision request's work
    and OpenVINO's streams want the cores (docs/design/image-decoding.md)."""
    return max(1, (cores or os.cpu_count() or 1) // 4)


def _decoder_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=decoder_threads(), thread_name_prefix="ovgw-image")
    return _pool


def _fail(spec: ImageInput, index: int, what: str) -> InvalidArgument:
    return InvalidArgument(f"input '{spec.name}': image {index}: {what}")


def _decode(spec: ImageInput, index: int, data) -> np.ndarray:
    """One image: decoded, its channels checked, converted to the input's element type (HxWxC)."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise _fail(spec, index, "is empty")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise _fail(spec, index, f"cannot be decoded ({len(data)} bytes; JPEG, PNG, BMP, TIFF, WebP ...)")
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if spec.channels >= 0 and image.shape[2] != spec.channels:
        hint = (
            ""
            if spec.layout_set
            else "; the input names no layout, so N...HWC was assumed: if it is NCHW, configure "
            '--layout NHWC:NCHW ("layout": "NHWC:NCHW" in config.json)'
        )
        raise _fail(
            spec,
            index,
            f"has {image.shape[2]} channel(s); the model takes {spec.channels} (C of N...HWC){hint}",
        )
    if image.dtype != spec.dtype:
        image = _convert(image, spec.dtype)
    return image


def _convert(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """As cv::Mat::convertTo with no scaling: values kept, saturated where the target is narrower."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if (
            image.dtype.kind == "f"
            or np.iinfo(image.dtype).max > info.max
            or np.iinfo(image.dtype).min < info.min
        ):
            image = np.clip(np.rint(image) if image.dtype.kind == "f" else image, info.min, info.max)
    return image.astype(dtype)


def _resized(image: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    if image.shape[:2] == (height, width):
        if out is None:
            return image
        np.copyto(out, image)
        return out
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # OpenCV drops a single channel
        resized = resized[:, :, np.newaxis]
    if out is None:
        return resized
    np.copyto(out, resized)
    return out


def _timed(work, *args):
    """Run `work` on a decoder thread; its result and the thread CPU time it took."""
    started = time.thread_time_ns()
    result = work(*args)
    return result, time.thread_time_ns() - started


@dataclass(frozen=True, slots=True)
class Decoded:
    batch: np.ndarray  # N x H x W x C, the input's element type
    cpu_ns: int  # the decoder threads' CPU time


async def decode_images(spec: ImageInput, encoded: np.ndarray) -> Decoded:
    """The [N] encoded images of one request input as one N x H x W x C array of the input's type."""
    if encoded.ndim != 1:
        raise InvalidArgument(
            f"input '{spec.name}': encoded images are sent with shape [N] (N images); "
            f"got {list(encoded.shape)}"
        )
    count = encoded.shape[0]
    low, high = spec.batch
    if count < max(low, 1) or (high >= 0 and count > high):
        expected = str(low) if low == high else f"{max(low, 1)} to {'any' if high < 0 else high}"
        raise InvalidArgument(
            f"input '{spec.name}': {count} image(s) do not fit the model's batch dimension N "
            f"(expected {expected})"
        )
    loop = asyncio.get_running_loop()
    pool = _decoder_pool()
    timed = await asyncio.gather(
        *(loop.run_in_executor(pool, _timed, _decode, spec, i, encoded[i]) for i in range(count))
    )
    decoded = [image for image, _ in timed]
    cpu_ns = sum(ns for _, ns in timed)
    first = decoded[0]
    height, width = spec.target_size(first.shape[0], first.shape[1]) if spec.resize else first.shape[:2]
    if not spec.resize:
        for i, image in enumerate(decoded):
            if image.shape[:2] != first.shape[:2]:
                raise _fail(
                    spec,
                    i,
                    f"is {image.shape[1]}x{image.shape[0]}, image 0 is {first.shape[1]}x{first.shape[0]}: "
                    "the model's height or width is dynamic, so every image of a request must share one size",
                )
    channels = first.shape[2]
    for i, image in enumerate(decoded):
        if image.shape[2] != channels:  # only possible when the model's C is dynamic
            raise _fail(spec, i, f"has {image.shape[2]} channel(s), image 0 has {channels}")
    if count == 1:
        if first.shape[:2] != (height, width):
            first, ns = await loop.run_in_executor(pool, _timed, _resized, first, height, width)
            cpu_ns += ns
        return Decoded(first[np.newaxis], cpu_ns)  # the decoder's (or resize's) own array: no copy
    batch = np.empty((count, height, width, channels), spec.dtype)
    timed = await asyncio.gather(
        *(
            loop.run_in_executor(pool, _timed, _resized, image, height, width, batch[i])
            for i, image in enumerate(decoded)
        )
    )
    return Decoded(batch, cpu_ns + sum(ns for _, ns in timed))
