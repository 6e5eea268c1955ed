"""ModelInfer's tensor bytes on the gRPC wire, kept out of protobuf's copies.

Protobuf's Python runtime copies a `bytes` field when it parses a message (into its arena), again each
time the field is read (a new Python `bytes`), and again when it serializes. For `raw_input_contents` and
`raw_output_contents`, which hold every tensor byte, the gateway reads and writes those fields itself
(the wire format of a repeated `bytes` field is simple: a key, a varint length, the bytes) and lets
protobuf handle the small rest of the message.

Copies of a tensor byte between grpc's message buffer and OpenVINO: one for an input (read-only views of
the request bytes, so OpenVINO's tensor takes a copy), one for an output (the join of the response
parts). grpc itself copies between its slices and the Python `bytes` of the message on each side; that
copy belongs to grpcio and no Python server avoids it.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

# Field numbers of the repeated bytes fields (protos/ovgw_grpc_service.proto, as in Triton's).
RAW_INPUT_CONTENTS = 7  # ModelInferRequest
RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse
INFER_RESPONSE = 2  # ModelStreamInferResponse.infer_response

_LENGTH_DELIMITED = 2


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(view) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def split_bytes_field(message: bytes, field_number: int) -> tuple[bytes, list[memoryview]]:
    """Split a serialized message into the message without the repeated bytes field `field_number` (for
    protobuf to parse: a copy of the small rest only) and views of that field's entries, in order."""
    view = memoryview(message)
    end = len(view)
    kept: list[memoryview] = []
    entries: list[memoryview] = []
    pos = kept_from = 0
    while pos < end:
        start = pos
        key, pos = _read_varint(view, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _read_varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(view, pos)
            value_start = pos
            pos += length
            if key >> 3 == field_number and pos <= end:
                kept.append(view[kept_from:start])
                entries.append(view[value_start:pos])
                kept_from = pos
        elif wire_type == 5:
            pos += 4
        else:  # groups (3, 4) and the reserved types: never in this protocol
            raise DecodeError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise DecodeError("a field runs past the end of the message")
    if not entries:
        return message, []
    kept.append(view[kept_from:end])
    return b"".join(kept), entries


def bytes_field(field_number: int, values: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """The wire form of a repeated bytes field, as parts to join: each value stays a reference."""
    key = varint((field_number << 3) | _LENGTH_DELIMITED)
    parts: list[bytes | memoryview] = []
    for value in values:
        parts.append(key + varint(len(value)))
        parts.append(value)
    return parts


def length_delimited(field_number: int, parts: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """`parts` (one serialized message) as a message-typed field of an enclosing message."""
    size = sum(len(p) for p in parts)
    return [varint((field_number << 3) | _LENGTH_DELIMITED) + varint(size), *parts]
