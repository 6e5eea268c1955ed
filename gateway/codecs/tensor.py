"""Tensor <-> bytes and tensor <-> JSON conversions shared by the gRPC and REST codecs.

The raw layout is the protocol's: little-endian, row-major, and for BYTES each
element as a 4-byte little-endian length followed by its bytes. Fixed-size types
are decoded with np.frombuffer (no copy) and encoded as views of the result
array; only JSON turns a tensor into a Python list.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from gateway.core.datatypes import BY_NAME, WIRE_DTYPE
from gateway.core.errors import InvalidArgument

_LENGTH = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# numpy refuses an array whose non-zero dimensions times its element size pass 2**63 bytes, even when a
# zero dimension elsewhere makes it empty: such a shape cannot be a tensor (8 bytes: the widest element,
# and the size of an object pointer for BYTES).
_MAX_ELEMENTS = ((1 << 63) - 1) // 8


def check_declared_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """A request's declared shape: non-negative dimensions whose product (zeros left out) fits in int64.
    Later code may build arrays of it without overflow."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > _MAX_ELEMENTS or (count == 0 and math.prod(d for d in shape if d) > _MAX_ELEMENTS):
        raise InvalidArgument(f"input '{name}': shape {list(shape)} is too large for any tensor")
    return shape


def datatype_or_error(name: str, datatype: str):
    dt = BY_NAME.get(datatype)
    if dt is None:
        raise InvalidArgument(
            f"input '{name}': unknown datatype '{datatype}'; expected one of {', '.join(BY_NAME)}"
        )
    return dt


def array_from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """Decode one input's raw contents; the size must match shape x datatype exactly."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _bytes_array_from_raw(name, shape, count, raw)
    wire = WIRE_DTYPE[datatype]
    expected = count * wire.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}': raw content has {len(raw)} bytes; expected {expected} "
            f"for shape {list(shape)} and datatype {datatype}"
        )
    return np.frombuffer(raw, dtype=wire).reshape(shape)


def _bytes_array_from_raw(
    name: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview
) -> np.ndarray:
    # Each element takes at least its 4-byte length: a shape that claims more elements than the bytes
    # can hold is refused before anything is allocated for it (a few bytes may declare [65536]*3).
    if count * 4 > len(raw):
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} declares {count} BYTES elements, but the content has "
            f"only {len(raw)} bytes (each element takes at least 4)"
        )
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset, end = 0, len(view)
    for i in range(count):
        if offset + 4 > end:
            raise InvalidArgument(
                f"input '{name}': BYTES content ends after {i} of {count} elements for shape {list(shape)}"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"input '{name}': BYTES element {i} declares {length} bytes but only {end - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        raise InvalidArgument(
            f"input '{name}': BYTES content has {end - offset} bytes left over after {count} elements "
            f"for shape {list(shape)}"
        )
    return out.reshape(shape)


def encoded_images_from_raw(name: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """The raw contents of a BYTES input that takes encoded images: length-prefixed elements, or, with
    shape [1], one image without its prefix (what perf_analyzer sends for a base64 `b64` image, and what
    OVMS took for a single image). A JPEG or PNG never starts with a prefix that frames it whole."""
    if shape == (1,) and (len(raw) < 4 or _LENGTH.unpack_from(raw, 0)[0] != len(raw) - 4):
        out = np.empty(1, dtype=object)
        out[0] = bytes(raw)
        return out
    return array_from_raw(name, "BYTES", shape, raw)


def raw_from_array(datatype: str, array: np.ndarray) -> bytes | memoryview:
    """Encode an output for raw transport: a zero-copy view for fixed-size types."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    if array.size == 0:
        return b""  # (memoryview cannot cast a view with a zero in its shape)
    wire = WIRE_DTYPE[datatype]
    if array.dtype != wire or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire)
    return array.data.cast("B")


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.ravel():
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def array_from_contents(name: str, datatype: str, shape: tuple[int, ...], values: Sequence) -> np.ndarray:
    """Decode typed contents (gRPC `contents`) or a JSON `data` list (flat or nested)."""
    dt = BY_NAME[datatype]
    count = element_count(shape)
    if isinstance(values, list) and values and not isinstance(values[0], list) and len(values) != count:
        raise _count_error(name, len(values), count, shape)  # a flat list: refused before conversion
    if datatype == "BYTES":
        flat = _flatten(values)
        if len(flat) != count:
            raise _count_error(name, len(flat), count, shape)
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                v = v.encode()
            elif not isinstance(v, bytes | bytearray):
                raise InvalidArgument(
                    f"input '{name}': BYTES element {i} is {type(v).__name__}, not a string"
                )
            out[i] = bytes(v)
        return out.reshape(shape)
    try:
        if datatype == "BF16":
            # JSON carries BF16 as numbers; keep the upper 16 bits of the FP32 pattern.
            arr = np.asarray(values, dtype=np.float32).view(np.uint32) >> 16
            arr = arr.astype(np.uint16)
        else:
            arr = np.asarray(values, dtype=dt.numpy)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidArgument(f"input '{name}': data is not a valid {datatype} array: {e}") from None
    if arr.size != count:
        raise _count_error(name, arr.size, count, shape)
    return arr.reshape(shape)


def _count_error(name: str, got: int, expected: int, shape) -> InvalidArgument:
    return InvalidArgument(
        f"input '{name}': data has {got} elements; expected {expected} for shape {list(shape)}"
    )


def _flatten(values) -> list:
    if not isinstance(values, list | tuple):
        return [values]
    out: list = []
    stack = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list | tuple):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def json_from_array(datatype: str, array: np.ndarray) -> list:
    """A flat list for a JSON response (the protocol's row-major `data`)."""
    flat = array.ravel()
    if datatype == "BYTES":
        return [_bytes_to_json(v) for v in flat]
    if datatype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).tolist()
    return flat.tolist()


def _bytes_to_json(value) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            # JSON cannot carry arbitrary bytes; latin-1 maps each byte to one code point losslessly.
            return value.decode("latin-1")
    return str(value)
