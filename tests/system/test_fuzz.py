"""Property-based fuzzing (Hypothesis) of both decoders against a live gateway.

REST: valid inference requests (JSON and binary framing, optionally gzip), then mutated: bytes flipped,
cut, inserted; JSON values replaced by random JSON; Inference-Header-Content-Length, Content-Length and
Content-Encoding headers lied about. gRPC: valid ModelInferRequest messages, structurally mutated
(random names, datatypes, shapes, contents) and byte-mutated, over a real channel.

Invariant for every request: a 2xx, or a protocol error (HTTP 4xx with `{"error": "..."}`; a gRPC status
other than INTERNAL/UNKNOWN with a message), never a 5xx, a crash, a hang or a traceback; and the next
valid request still answers correctly. Fixed seeds here (`derandomize`); `make fuzz` runs longer
(FUZZ_EXAMPLES).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.datatypes import BY_NAME
from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.servers import start_test_gateway

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
HEADER_CHARS = st.characters(min_codepoint=33, max_codepoint=126)  # what a header value can carry
MODELS = ["dummy", "simple", "identity_bytes", "identity_fp16", "scalars", "nope"]


@pytest.fixture(scope="module")
def fuzz_server(model_repo, tmp_path_factory):
    gw = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--rest_max_body_bytes", "4000000"],
        tmp_path_factory.mktemp("fuzz") / "gw.log",
    )
    yield gw
    log = gw.log()
    assert gw.stop() == 0
    assert "Traceback" not in log and "[ERROR]" not in log, log[-4000:]


# --- REST ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def valid_rest(model: str, binary: bool) -> tuple[dict, bytes]:
    """A valid request for a demo model: its JSON document and its binary section."""
    if model == "simple":
        inputs = [
            ("INPUT0", "INT32", [1, 16], np.arange(16, dtype=np.int32)),
            ("INPUT1", "INT32", [1, 16], np.ones(16, np.int32)),
        ]
    elif model == "identity_bytes":
        inputs = [("INPUT0", "BYTES", [1, 2], np.array([b"ab", b"c"], dtype=object))]
    else:
        inputs = [("b", "FP32", [1, 10], np.arange(10, dtype=np.float32))]
    doc: dict = {"id": "f", "inputs": []}
    binary_parts = []
    for name, datatype, shape, array in inputs:
        entry: dict = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = (
                b"".join(struct.pack("<I", len(v)) + v for v in array)
                if datatype == "BYTES"
                else array.tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = [v.decode() for v in array] if datatype == "BYTES" else array.tolist()
        doc["inputs"].append(entry)
    return doc, b"".join(binary_parts)


def replace_somewhere(doc, value, path: list[int]):
    """Replace one node of `doc`, chosen by `path` (indices taken modulo the children there)."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    out[key] = replace_somewhere(out[key], value, path[1:])
    return out


@st.composite
def rest_requests(draw) -> tuple[str, dict[str, str], bytes]:
    model = draw(st.sampled_from(MODELS))
    binary = draw(st.booleans())
    doc, section = valid_rest(model, binary)
    if draw(st.booleans()):
        doc = replace_somewhere(doc, draw(json_values), draw(st.lists(st.integers(0, 9), max_size=5)))
    header = json.dumps(doc).encode()
    body = header + section
    headers = {}
    if binary or draw(st.booleans()):
        length = draw(
            st.one_of(
                st.just(str(len(header))),
                st.integers(-5, len(body) + 5).map(str),
                st.text(HEADER_CHARS, max_size=4),
            )
        )
        headers["Inference-Header-Content-Length"] = length
    mutation = draw(st.sampled_from(["none", "flip", "cut", "insert"]))
    if mutation != "none" and body:
        at = draw(st.integers(0, len(body) - 1))
        if mutation == "flip":
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
        elif mutation == "cut":
            body = body[:at]
        else:
            body = body[:at] + draw(st.binary(min_size=1, max_size=16)) + body[at:]
    if draw(st.booleans()):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
        if draw(st.booleans()) and body:
            body = body[: draw(st.integers(0, len(body)))]  # a gzip stream cut short
    version = draw(st.sampled_from(["", "/versions/1", "/versions/0", "/versions/x"]))
    return f"/v2/models/{model}{version}/infer", headers, body


def rest_call(gw, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", gw.rest_port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        connection.close()


def assert_rest_still_answers(gw) -> None:
    doc, _ = valid_rest("dummy", False)
    status, body, _ = rest_call(gw, "/v2/models/dummy/infer", {}, json.dumps(doc).encode())
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [float(i + 1) for i in range(10)]


@FUZZ
@given(request=rest_requests())
def test_rest_decoder_answers_every_mutated_request_with_a_protocol_error(fuzz_server, request):
    path, headers, body = request
    status, answer, content_type = rest_call(fuzz_server, path, headers, body)
    assert status < 500, (status, answer[:300], path, headers, body[:200])
    if status >= 400:
        assert content_type.startswith("application/json"), answer[:200]
        assert json.loads(answer)["error"]
    assert_rest_still_answers(fuzz_server)


@FUZZ
@given(head=st.binary(max_size=200), tail=st.sampled_from([b"\r\n\r\n", b"\r\n", b""]))
def test_rest_raw_bytes_on_the_socket_never_break_the_server(fuzz_server, head, tail):
    with socket.create_connection(("127.0.0.1", fuzz_server.rest_port), timeout=30) as s:
        s.sendall(b"POST /v2/models/dummy/infer HTTP/1.1\r\n" + head + tail)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if data:
        status = int(data.split(b" ", 2)[1])
        assert status < 500, data[:300]
    assert_rest_still_answers(fuzz_server)


# --- gRPC ---------------------------------------------------------------------------------------

ALLOWED_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a `timeout` parameter of a few microseconds
}


@st.composite
def grpc_requests(draw) -> bytes:
    model = draw(st.sampled_from(MODELS))
    doc, _ = valid_rest(model, True)
    request = pb.ModelInferRequest(model_name=model, id="g")
    if draw(st.booleans()):
        request.model_version = draw(st.sampled_from(["1", "0", "-1", "x", "99"]))
    for entry in doc["inputs"]:
        tensor = request.inputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        if entry["datatype"] == "BYTES":
            request.raw_input_contents.append(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c")
        else:
            dtype = np.int32 if entry["datatype"] == "INT32" else np.float32
            request.raw_input_contents.append(np.ones(entry["shape"], dtype).tobytes())
        if draw(st.booleans()):  # structural mutations
            tensor.name = draw(st.sampled_from([tensor.name, "", "zz", "INPUT1"]))
            tensor.datatype = draw(st.sampled_from([tensor.datatype, "", "FP99", *BY_NAME]))
            tensor.ClearField("shape")
            tensor.shape.extend(draw(st.lists(st.integers(-3, 2**62), max_size=4)))
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["fp32_contents", "int_contents", "bytes_contents", "bool_contents"]))
            values = draw(st.lists(st.integers(-5, 5), max_size=20))
            field = getattr(tensor.contents, kind)
            field.extend(
                [bytes([v % 256]) for v in values]
                if kind == "bytes_contents"
                else [bool(v) for v in values]
                if kind == "bool_contents"
                else values
            )
    if draw(st.booleans()):
        request.ClearField("raw_input_contents") if draw(
            st.booleans()
        ) else request.raw_input_contents.append(draw(st.binary(max_size=64)))
    if draw(st.booleans()):
        key = draw(st.sampled_from(["priority", "timeout", "binary_data_output", "x"]))
        param = request.parameters[key]
        choice = draw(st.sampled_from(["int64", "bool", "string", "uint64", "double"]))
        if choice == "int64":
            param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif choice == "uint64":
            param.uint64_param = draw(st.integers(0, 2**64 - 1))
        elif choice == "bool":
            param.bool_param = draw(st.booleans())
        elif choice == "double":
            param.double_param = draw(st.floats(allow_nan=True))
        else:
            param.string_param = draw(st.text(max_size=8))
    message = request.SerializeToString()
    mutation = draw(st.sampled_from(["none", "none", "flip", "cut", "insert"]))
    if mutation != "none" and message:
        at = draw(st.integers(0, len(message) - 1))
        if mutation == "flip":
            message = message[:at] + bytes([message[at] ^ draw(st.integers(1, 255))]) + message[at + 1 :]
        elif mutation == "cut":
            message = message[:at]
        else:
            message = message[:at] + draw(st.binary(min_size=1, max_size=16)) + message[at:]
    return message


@pytest.fixture(scope="module")
def raw_infer(fuzz_server):
    channel = grpc.insecure_channel(fuzz_server.grpc_url)
    yield channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    channel.close()


def assert_grpc_still_answers(raw_infer) -> None:
    request = pb.ModelInferRequest(model_name="dummy")
    request.inputs.add(name="b", datatype="FP32", shape=[1, 10])
    request.raw_input_contents.append(np.zeros((1, 10), np.float32).tobytes())
    response = pb.ModelInferResponse.FromString(raw_infer(request.SerializeToString(), timeout=30))
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [1.0] * 10


@FUZZ
@given(message=grpc_requests())
def test_grpc_decoder_answers_every_mutated_message_with_a_protocol_status(raw_infer, message):
    try:
        raw_infer(message, timeout=30)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED_GRPC, (e.code(), e.details())
        assert e.details()
    assert_grpc_still_answers(raw_infer)
