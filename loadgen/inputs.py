"""Input tensors for a load run, from the model's metadata and config, as perf_analyzer builds them."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}  # fmt: skip


@dataclass
class TensorData:
    name: str
    datatype: str
    array: np.ndarray


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """perf_analyzer's --shape NAME:d1,d2,... (non-batch dimensions when the model batches)."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition(":")
        if not name or not dims:
            raise SystemExit(f"--shape {item!r}: expected NAME:d1,d2,...")
        shapes[name] = [int(d) for d in dims.split(",")]
    return shapes


def build_inputs(
    metadata_inputs: list[dict], max_batch_size: int, batch: int, shapes: dict[str, list[int]], source: str
) -> list[TensorData]:
    """One request's inputs. source: zero, random, or a perf_analyzer-style JSON file."""
    if batch > 1 and max_batch_size == 0:
        raise SystemExit("the model does not batch (max_batch_size 0): -b must be 1")
    if max_batch_size and batch > max_batch_size:
        raise SystemExit(f"-b {batch} exceeds the model's max_batch_size {max_batch_size}")
    file_data = _load_file(source) if source not in ("zero", "random") else None
    rng = np.random.default_rng(0)
    tensors = []
    for spec in metadata_inputs:
        name, datatype = spec["name"], spec["datatype"]
        dims = list(spec["shape"][1:] if max_batch_size else spec["shape"])
        if name in shapes:
            dims = shapes[name]
        if any(d < 0 for d in dims):
            raise SystemExit(f"input {name} has dynamic dimensions {dims}: give --shape {name}:...")
        shape = ([batch] if max_batch_size else []) + dims
        if file_data is not None:
            if name not in file_data:
                raise SystemExit(f"--input-data: no values for input {name}")
            one = np.asarray(file_data[name], dtype=NUMPY[datatype]).reshape(dims)
            array = np.stack([one] * batch) if max_batch_size else one
        elif datatype == "BYTES":
            array = np.full(shape, b"0" if source == "zero" else b"load", dtype=np.object_)
        elif source == "zero":
            array = np.zeros(shape, NUMPY[datatype])
        else:
            array = (
                rng.random(shape).astype(NUMPY[datatype])
                if datatype.startswith("FP")
                else rng.integers(0, 100, shape).astype(NUMPY[datatype])
            )
        tensors.append(TensorData(name, datatype, array))
    return tensors


def _load_file(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not entries:
        raise SystemExit(f'--input-data {path}: expected {{"data": [{{"INPUT": [...]}}]}}')
    return {name: _values(value) for name, value in entries[0].items()}


def _values(value):
    """An input's values in perf_analyzer's forms: a list, {"content": list}, or {"b64": ...} (raw bytes:
    for a BYTES input, one element, e.g. an encoded image)."""
    if isinstance(value, dict) and "content" in value:
        value = value["content"]
    if isinstance(value, dict) and "b64" in value:
        return [base64.b64decode(value["b64"])]
    return value
