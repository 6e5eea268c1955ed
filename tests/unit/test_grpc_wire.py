"""The hand-written part of ModelInfer's wire format (transports/grpc/wire.py) against protobuf's own."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from gateway.core.records import InferOutput, InferResponse
from gateway.proto import ovgw_grpc_service_pb2 as pb
from gateway.transports.grpc.server import encode_infer_response, parse_infer_request
from gateway.transports.grpc.wire import RAW_INPUT_CONTENTS, split_bytes_field, varint


def _request(contents: list[bytes]) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", model_version="2", id="req-7")
    msg.parameters["priority"].uint64_param = 1
    msg.parameters["text"].string_param = "x" * 300  # a long length-delimited field before the contents
    for i, _ in enumerate(contents):
        t = msg.inputs.add(name=f"IN{i}", datatype="UINT8", shape=[len(contents[i])])
        t.parameters["binary_data_size"].int64_param = len(contents[i])
    msg.outputs.add(name="OUT")
    msg.raw_input_contents.extend(contents)
    return msg


@pytest.mark.parametrize(
    "contents",
    [[], [b""], [b"abc"], [b"\x00" * 127, b"\xff" * 128], [bytes(range(256)) * 700, b"z"]],
    ids=["none", "empty", "short", "varint-edges", "large"],
)
def test_split_gives_protobuf_s_message_and_views_of_the_contents(contents):
    original = _request(contents)
    wire = original.SerializeToString()
    parsed = parse_infer_request(wire)
    assert [bytes(v) for v in parsed.raw_input_contents] == contents
    expected = pb.ModelInferRequest()
    expected.CopyFrom(original)
    del expected.raw_input_contents[:]
    assert parsed.message == expected
    for view in parsed.raw_input_contents:  # views of the wire bytes: nothing copied
        assert view.obj is wire


def test_contents_interleaved_with_other_fields_keep_their_order():
    # Protobuf writes fields in number order, but a reader must take them in any order.
    head = pb.ModelInferRequest(model_name="m").SerializeToString()
    key = varint((RAW_INPUT_CONTENTS << 3) | 2)
    tail = pb.ModelInferRequest(id="late").SerializeToString()
    wire = key + varint(2) + b"ab" + head + key + varint(1) + b"c" + tail
    rest, views = split_bytes_field(wire, RAW_INPUT_CONTENTS)
    assert [bytes(v) for v in views] == [b"ab", b"c"]
    msg = pb.ModelInferRequest.FromString(rest)
    assert msg.model_name == "m" and msg.id == "late" and not msg.raw_input_contents


@pytest.mark.parametrize(
    "wire",
    [
        b"\x3a\x05ab",  # raw_input_contents says 5 bytes, 2 follow
        b"\x0a\x80",  # a length varint cut short
        b"\x0b",  # wire type 3 (a group)
        b"\x3a" + b"\xff" * 11,  # an overlong varint
    ],
    ids=["truncated-field", "truncated-varint", "group", "overlong-varint"],
)
def test_malformed_messages_are_decode_errors(wire):
    with pytest.raises(DecodeError):
        parse_infer_request(wire)


def test_encoded_response_parses_as_protobuf_s_own():
    big = np.arange(40_000, dtype=np.float32).reshape(200, 200)
    response = InferResponse(
        "m",
        "3",
        [
            InferOutput("A", "FP32", big.shape, big),
            InferOutput("B", "BYTES", (2,), np.array([b"x", b"yz"], dtype=object)),
            InferOutput("C", "INT64", (), np.array(7, np.int64)),
        ],
        id="r1",
    )
    parts = encode_infer_response(response, final=True)
    assert any(isinstance(p, memoryview) and p.obj is big for p in parts)  # the array itself, until the join
    msg = pb.ModelInferResponse.FromString(b"".join(parts))
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "3", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("A", "FP32", [200, 200]),
        ("B", "BYTES", [2]),
        ("C", "INT64", []),
    ]
    assert msg.raw_output_contents[0] == big.tobytes()
    assert msg.raw_output_contents[1] == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    assert msg.raw_output_contents[2] == np.int64(7).tobytes()
    assert msg.parameters["triton_final_response"].bool_param is True
