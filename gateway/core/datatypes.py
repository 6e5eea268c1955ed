"""The one table that maps protocol datatypes to numpy, OpenVINO and Triton config types.

Every codec (gRPC raw and typed contents, REST JSON and binary) and the model
metadata use it, so a datatype is spelled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openvino as ov


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str  # the protocol name: "FP32"
    numpy: np.dtype  # dtype of the array the gateway holds; object for BYTES
    openvino: ov.Type
    config_name: str  # Triton model config DataType: "TYPE_FP32"
    contents_field: str | None  # InferTensorContents field for typed gRPC contents; None = raw only
    itemsize: int  # bytes per element on the wire; 0 for BYTES (length-prefixed)


# BF16 has no numpy type: the gateway carries it as uint16 bit patterns and
# tells OpenVINO the element type explicitly (see runtime/executor.py).
_TABLE = (
    Datatype("BOOL", np.dtype(np.bool_), ov.Type.boolean, "TYPE_BOOL", "bool_contents", 1),
    Datatype("UINT8", np.dtype(np.uint8), ov.Type.u8, "TYPE_UINT8", "uint_contents", 1),
    Datatype("UINT16", np.dtype(np.uint16), ov.Type.u16, "TYPE_UINT16", "uint_contents", 2),
    Datatype("UINT32", np.dtype(np.uint32), ov.Type.u32, "TYPE_UINT32", "uint_contents", 4),
    Datatype("UINT64", np.dtype(np.uint64), ov.Type.u64, "TYPE_UINT64", "uint64_contents", 8),
    Datatype("INT8", np.dtype(np.int8), ov.Type.i8, "TYPE_INT8", "int_contents", 1),
    Datatype("INT16", np.dtype(np.int16), ov.Type.i16, "TYPE_INT16", "int_contents", 2),
    Datatype("INT32", np.dtype(np.int32), ov.Type.i32, "TYPE_INT32", "int_contents", 4),
    Datatype("INT64", np.dtype(np.int64), ov.Type.i64, "TYPE_INT64", "int64_contents", 8),
    Datatype("FP16", np.dtype(np.float16), ov.Type.f16, "TYPE_FP16", None, 2),
    Datatype("FP32", np.dtype(np.float32), ov.Type.f32, "TYPE_FP32", "fp32_contents", 4),
    Datatype("FP64", np.dtype(np.float64), ov.Type.f64, "TYPE_FP64", "fp64_contents", 8),
    Datatype("BF16", np.dtype(np.uint16), ov.Type.bf16, "TYPE_BF16", None, 2),
    Datatype("BYTES", np.dtype(object), ov.Type.string, "TYPE_STRING", "bytes_contents", 0),
)

BY_NAME: dict[str, Datatype] = {d.name: d for d in _TABLE}
_BY_OPENVINO: dict[ov.Type, Datatype] = {d.openvino: d for d in _TABLE}

# Little-endian views for wire (de)serialisation; the protocol is little-endian.
WIRE_DTYPE: dict[str, np.dtype] = {d.name: d.numpy.newbyteorder("<") for d in _TABLE if d.itemsize}


def from_openvino(element_type: ov.Type) -> Datatype:
    """The protocol datatype of an OpenVINO element type; raises ValueError when there is none."""
    try:
        return _BY_OPENVINO[element_type]
    except KeyError:
        raise ValueError(
            f"OpenVINO element type {element_type} has no Open Inference Protocol datatype"
        ) from None


# numpy dtype -> datatype (BF16 has no numpy type of its own: uint16 is UINT16; BYTES is by kind, below).
# A dict lookup: this runs for every output of every custom node and Python node.
_BY_NUMPY: dict[np.dtype, Datatype] = {d.numpy: d for d in _TABLE if d.name not in ("BF16", "BYTES")}


def from_numpy(dtype: np.dtype) -> Datatype:
    """The protocol datatype of a numpy array (used by the in-process API)."""
    dtype = np.dtype(dtype)
    found = _BY_NUMPY.get(dtype)
    if found is not None:
        return found
    if dtype.kind in ("O", "S", "U"):
        return BY_NAME["BYTES"]
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
