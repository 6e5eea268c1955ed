"""The REST transport's wire format: infer requests and responses as JSON, with the binary tensor extension.

Requests become InferRequest records whose tensors are numpy views of the body's binary section (or arrays
from JSON `data`); responses become a JSON header and the outputs' bytes, views of the output arrays.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.codecs.tensor import (
    array_from_contents,
    array_from_raw,
    check_declared_shape,
    datatype_or_error,
    element_count,
    encoded_images_from_raw,
    json_from_array,
    raw_from_array,
)
from gateway.core.datatypes import Datatype
from gateway.core.errors import InvalidArgument
from gateway.core.jsondoc import parse_json
from gateway.core.records import InferInput, InferRequest, InferResponse, RequestedOutput
from gateway.dataplane.api import DecodeTarget
from gateway.memory.shared_memory import BYTE_SIZE, OFFSET, REGION, SystemSharedMemory

HEADER_LENGTH = "Inference-Header-Content-Length"


def json_object(value, what: str) -> dict:
    """`value` if it is a JSON object, else INVALID_ARGUMENT naming `what`."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def split_body(
    body: bytearray | memoryview, header_length: str | None
) -> tuple[bytearray | memoryview, memoryview]:
    """Split a request body into its JSON header and its binary section."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} must be an integer; got '{header_length}'") from None
    if not 0 <= length <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    view = memoryview(body)
    return view[:length], view[length:]


def decode_infer_request(
    model: str,
    version: str,
    header: bytes | bytearray | memoryview,
    binary: memoryview,
    served: DecodeTarget | None = None,
    memory: SystemSharedMemory | None = None,
) -> InferRequest:
    """A JSON (or binary-extension) infer request as a record: the inputs as numpy arrays (views of the
    body's binary section, or of a shared-memory region of `memory`, where possible), the requested
    outputs, the parameters."""
    doc = json_object(parse_json(header, "the request body"), "the request body")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("the request must have a non-empty 'inputs' list")
    if served is not None:
        served.check_input_count(len(raw_inputs))
    sections = _BinarySections(binary)
    inputs = [
        _decode_input(position, item, sections, served, memory, only_input=len(raw_inputs) == 1)
        for position, item in enumerate(raw_inputs)
    ]
    if sections.remaining:
        raise InvalidArgument(f"the binary section has {sections.remaining} bytes that no input claims")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    parameters = json_object(doc.get("parameters", {}), "parameters")
    return InferRequest(model, inputs, version, request_id, _requested_outputs(doc), parameters)


class _BinarySections:
    """The binary section of a request, taken input by input in order."""

    def __init__(self, binary: memoryview):
        self._binary = binary
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._binary) - self._offset

    def take(self, name: str, size: int, what: str) -> memoryview:
        if size > self.remaining:
            raise InvalidArgument(
                f"input '{name}': {what} but only {self.remaining} bytes of binary data remain"
            )
        section = self._binary[self._offset : self._offset + size]
        self._offset += size
        return section


def _decode_input(
    position: int,
    item: Any,
    sections: _BinarySections,
    served: DecodeTarget | None,
    memory: SystemSharedMemory | None,
    only_input: bool,
) -> InferInput:
    item = json_object(item, f"inputs[{position}]")
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidArgument(f"inputs[{position}]: 'name' must be a string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input '{name}': 'datatype' must be a string")
    dt = datatype_or_error(name, datatype)
    shape_value = item.get("shape")
    if not isinstance(shape_value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape_value
    ):
        raise InvalidArgument(
            f"input '{name}': 'shape' must be a list of integers; got {json.dumps(shape_value)}"
        )
    shape = check_declared_shape(name, shape_value)
    params = json_object(item.get("parameters", {}), f"input '{name}': parameters")
    if REGION in params or BYTE_SIZE in params or OFFSET in params:
        data = _shared_memory_input(name, dt, shape, item, params, served, memory)
    else:
        data = _input_data(name, dt, shape, item, params, sections, served, only_input)
    return InferInput(name, dt.name, shape, data, params)


def _shared_memory_input(
    name: str,
    dt: Datatype,
    shape: tuple[int, ...],
    item: dict,
    params: dict,
    served: DecodeTarget | None,
    memory: SystemSharedMemory | None,
) -> np.ndarray:
    """An input in a shared-memory region: a view of it. Exactly one of `data`, binary_data_size and
    shared_memory_region says where an input is (Triton's rule)."""
    if "data" in item or "binary_data_size" in params:
        other = "data" if "data" in item else "binary_data_size"
        raise InvalidArgument(f"input '{name}': has both {REGION} and {other}; send one")
    if memory is None:
        raise InvalidArgument(f"input '{name}': shared memory is not available here")
    placement = memory.placement(f"input '{name}'", params)
    assert placement is not None  # params name a region or placement() raised
    if dt.name == "BYTES" and served is not None and served.takes_images(name):
        return encoded_images_from_raw(name, shape, placement.view())
    return array_from_raw(name, dt.name, shape, placement.view())


def _input_data(
    name: str,
    dt: Datatype,
    shape: tuple[int, ...],
    item: dict,
    params: dict,
    sections: _BinarySections,
    served: DecodeTarget | None,
    only_input: bool,
) -> np.ndarray:
    """An input's array, from wherever the request put it: a declared binary section, JSON `data`, or
    (as OVMS allows) an undeclared binary section sized by the shape, or the one input's unframed element."""
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise InvalidArgument(f"input '{name}': has both 'data' and binary_data_size; send one")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
        section = sections.take(name, size, f"binary_data_size is {size}")
        if dt.name == "BYTES" and served is not None and served.takes_images(name):
            return encoded_images_from_raw(name, shape, section)
        return array_from_raw(name, dt.name, shape, section)
    if "data" in item:
        return array_from_contents(name, dt.name, shape, item["data"])
    if sections.remaining and dt.name == "BYTES" and only_input:
        # OVMS: the one input of a request may omit binary_data_size, and its binary section is then one
        # element, unframed (an encoded image, typically).
        if shape != (1,):
            raise InvalidArgument(
                f"input '{name}': a binary section without binary_data_size is one element; "
                f"the shape must be [1], not {list(shape)}"
            )
        data = np.empty(1, dtype=object)
        data[0] = bytes(sections.take(name, sections.remaining, "the rest of the body"))
        return data
    if sections.remaining and dt.itemsize:
        # OVMS: a raw input may omit binary_data_size; its size follows from shape and datatype.
        size = element_count(shape) * dt.itemsize
        section = sections.take(name, size, f"shape {list(shape)} of {dt.name} takes {size} bytes")
        return array_from_raw(name, dt.name, shape, section)
    raise InvalidArgument(f"input '{name}': no data; send 'data' or parameters.binary_data_size")


def _requested_outputs(doc: dict) -> list[RequestedOutput] | None:
    """The outputs a request lists, or None for every output of the model."""
    if "outputs" not in doc:
        return None
    if not isinstance(doc["outputs"], list):
        raise InvalidArgument("'outputs' must be a list")
    outputs = []
    for position, item in enumerate(doc["outputs"]):
        item = json_object(item, f"outputs[{position}]")
        if not isinstance(item.get("name"), str):
            raise InvalidArgument(f"outputs[{position}]: 'name' must be a string")
        out_params = json_object(item.get("parameters", {}), f"output '{item['name']}': parameters")
        if out_params.get("classification"):
            raise InvalidArgument(f"output '{item['name']}': the classification extension is not supported")
        outputs.append(RequestedOutput(item["name"], out_params))
    return outputs or None


def single_raw_input_request(
    served: DecodeTarget, model: str, version: str, body: memoryview
) -> InferRequest:
    """`Inference-Header-Content-Length: 0`: the whole body is the one input of a one-input model, and
    the outputs come back binary."""
    if len(served.inputs) != 1:
        raise InvalidArgument(
            f"a request with no JSON header needs a model with exactly one input; "
            f"'{model}' has {len(served.inputs)}"
        )
    spec = (served.client_inputs or served.inputs)[0]  # an image input shown as BYTES takes one image
    binary_output = {"binary_data_output": True}
    if spec.datatype == "BYTES":
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        data = array_from_contents(spec.name, "BYTES", shape, [bytes(body)])
        return InferRequest(
            model, [InferInput(spec.name, "BYTES", shape, data)], version, parameters=binary_output
        )
    itemsize = datatype_or_error(spec.name, spec.datatype).itemsize
    dynamic = [i for i, d in enumerate(spec.shape) if d < 0]
    known = 1
    for d in spec.shape:
        known *= d if d >= 0 else 1
    dims = list(spec.shape)
    if len(dynamic) > 1:
        raise InvalidArgument(
            f"a request with no JSON header cannot infer the shape of input '{spec.name}' "
            f"{list(spec.shape)}: "
            "more than one dynamic dimension"
        )
    if dynamic:
        if known == 0 or len(body) % (known * itemsize):
            raise InvalidArgument(
                f"input '{spec.name}': {len(body)} bytes do not fit shape {list(spec.shape)} "
                f"of {spec.datatype}"
            )
        dims[dynamic[0]] = len(body) // (known * itemsize)
    data = array_from_raw(spec.name, spec.datatype, tuple(dims), body)
    return InferRequest(
        model, [InferInput(spec.name, spec.datatype, tuple(dims), data)], version, parameters=binary_output
    )


# Binary outputs at least this large are written to the socket from the arrays' own memory; smaller ones
# are joined into one body, as a copy of a few KB costs less than a write call per output.
STREAM_FROM_ARRAYS_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    header: bytes  # the JSON document
    binary: list[bytes | memoryview]  # the binary outputs in order: views of the output arrays

    @property
    def binary_size(self) -> int:
        return sum(len(part) for part in self.binary)


def encode_infer_response(
    response: InferResponse, binary_default: bool, in_shared_memory: Collection[str] = ()
) -> EncodedResponse:
    """The response document and its binary outputs; an output written to shared memory has neither data
    nor a binary section."""
    outputs = []
    parts: list[bytes | memoryview] = []
    for out in response.outputs:
        entry: dict = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if out.name in in_shared_memory:
            pass  # the client reads it from its region
        elif out.parameters.get("binary_data", binary_default):
            raw = raw_from_array(out.datatype, out.data)
            # Triton's C++ client rejects an output `parameters` object without binary_data_size.
            entry["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            entry["data"] = json_from_array(out.datatype, out.data)
        outputs.append(entry)
    doc: dict = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    return EncodedResponse(json.dumps(doc, separators=(",", ":")).encode(), parts)
