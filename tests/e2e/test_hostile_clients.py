"""Hostile and broken clients against a real gateway: every class of client that fuzzing found, and the
limits on what a client controls (bodies, nesting, declared sizes, connections, slow heads, streams).

Each test ends with a good request that must still be answered: bad input never stops the server. The
socket timeouts below detect a hang (no answer at all); they are not performance thresholds.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.core.jsondoc import MAX_JSON_DEPTH
from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.raw_grpc import RawGrpc, dummy_request
from tests.support.servers import start_test_gateway

BODY_LIMIT = 1_000_000
MAX_CONNECTIONS = 24
HEADER_TIMEOUT_S = 1.0
STREAM_QUEUE = 2
SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def hostile_server(model_repo, tmp_path_factory):
    config = json.loads((model_repo / "config.json").read_text())
    for entry in config["model_config_list"]:
        entry["config"]["base_path"] = str(model_repo / entry["config"]["base_path"])
        if entry["config"]["name"] == "simple":
            entry["config"]["max_queue_size"] = STREAM_QUEUE
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "config.json").write_text(json.dumps(config))
    gw = start_test_gateway(
        [
            "--config_path", str(folder / "config.json"),
            "--rest_max_body_bytes", str(BODY_LIMIT),
            "--rest_max_connections", str(MAX_CONNECTIONS),
            "--rest_header_timeout_seconds", str(HEADER_TIMEOUT_S),
        ],
        folder / "gw.log",
    )  # fmt: skip
    yield gw
    assert gw.stop() == 0


def exchange(gw, raw: bytes, timeout: float = 10) -> tuple[int, dict, dict]:
    """Send raw bytes on a fresh connection; the status, headers and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", gw.rest_port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"connection closed with no answer to {raw[:80]!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    headers = {"Host": "x", "Content-Length": str(len(body)), **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


GOOD = json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [1.0] * 10}]})


def assert_still_serving(gw) -> None:
    status, _, body = exchange(gw, post("/v2/models/dummy/infer", GOOD.encode()))
    assert status == 200 and body["outputs"][0]["data"] == [2.0] * 10
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    assert client.is_server_ready()


def client_errors_were_not_logged_as_server_faults(gw) -> None:
    log = gw.log()
    assert "Traceback" not in log, log[-3000:]
    assert "[ERROR]" not in log, [line for line in log.splitlines() if "[ERROR]" in line][:5]


# --- JSON nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs":' + "[" * 1000 + "]" * 1000 + "}",
        '{"inputs":[],"parameters":{"p":' + "[" * 1000 + "]" * 1000 + "}}",
        json.dumps({"id": "x", "inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10]}]})[:-1]
        + ',"data":'
        + "[" * (MAX_JSON_DEPTH + 1)
        + "1"
        + "]" * (MAX_JSON_DEPTH + 1)
        + "}",
    ],
    ids=["inputs", "parameters", "data"],
)
def test_json_nested_too_deep_anywhere_is_400_naming_the_limit(hostile_server, body):
    status, headers, doc = exchange(hostile_server, post("/v2/models/dummy/infer", body.encode()))
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert f"deeper than {MAX_JSON_DEPTH} levels" in doc["error"]
    assert_still_serving(hostile_server)


def test_a_deep_config_parameter_of_a_grpc_repository_load_is_invalid_argument(hostile_server):
    request = pb.RepositoryModelLoadRequest(model_name="dummy")
    request.parameters["config"].string_param = "[" * 5000 + "]" * 5000
    with pytest.raises(grpc.RpcError) as e:
        RawGrpc(hostile_server.grpc_url).call("RepositoryModelLoad", request, pb.RepositoryModelLoadResponse)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "deeper" in e.value.details()
    assert_still_serving(hostile_server)


# --- declared sizes against the bytes present ----------------------------------------------------

ABSURD_SHAPES = [[65536, 65536, 65536], [1, 268435456], [4611686018427387904, 2]]


@pytest.mark.parametrize("shape", ABSURD_SHAPES)
def test_an_absurd_bytes_shape_is_refused_before_allocating_over_rest_binary(hostile_server, shape):
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "BYTES",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    request = post(
        "/v2/models/identity_bytes/infer", header + raw, {"Inference-Header-Content-Length": str(len(header))}
    )
    status, _, doc = exchange(hostile_server, request)
    # Refused where the shape enters (too large for any tensor) or against the bytes present (declares ...).
    assert status == 400 and "INPUT0" in doc["error"]
    assert "declares" in doc["error"] or "too large for any tensor" in doc["error"]
    assert_still_serving(hostile_server)


@pytest.mark.parametrize("datatype", ["BYTES", "FP32", "INT64", "BOOL"])
@pytest.mark.parametrize("shape", ABSURD_SHAPES)
def test_an_absurd_shape_is_refused_over_rest_json(hostile_server, datatype, shape):
    model = {"BYTES": "identity_bytes", "FP32": "identity_fp32", "INT64": "identity_int64"}
    data = ["a", "b"] if datatype == "BYTES" else [1, 0]
    body = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}]}
    path = f"/v2/models/{model.get(datatype, 'identity_bool')}/infer"
    status, _, doc = exchange(hostile_server, post(path, json.dumps(body).encode()))
    assert status == 400 and "INPUT0" in doc["error"]
    assert_still_serving(hostile_server)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", ["BYTES", "FP32", "INT32"])
@pytest.mark.parametrize("shape", ABSURD_SHAPES)
def test_an_absurd_shape_is_refused_over_grpc(hostile_server, datatype, shape, typed):
    model = {"BYTES": "identity_bytes", "FP32": "identity_fp32", "INT32": "identity_int32"}[datatype]
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    if typed:
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend([b"a", b"b"])
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend([1.0, 2.0])
        else:
            tensor.contents.int_contents.extend([1, 2])
    else:
        request.raw_input_contents.append(struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b")
    with pytest.raises(grpc.RpcError) as e:
        RawGrpc(hostile_server.grpc_url).infer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "INPUT0" in e.value.details()
    assert_still_serving(hostile_server)


def test_more_inputs_than_the_model_has_is_refused_before_decoding_them(hostile_server):
    inputs = [{"name": f"x{i}", "datatype": "FP32", "shape": [1], "data": [1.0]} for i in range(5000)]
    status, _, doc = exchange(
        hostile_server, post("/v2/models/dummy/infer", json.dumps({"inputs": inputs}).encode())
    )
    assert status == 400 and "Invalid number of inputs - Expected: 1; Actual: 5000" in doc["error"]


# --- bodies: size, encodings, decompression bombs -------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
def test_a_content_length_over_the_limit_is_413_before_the_body_is_sent(hostile_server, encoding):
    headers = {"Content-Length": str(BODY_LIMIT + 1)} | ({"Content-Encoding": encoding} if encoding else {})
    request = post("/v2/models/dummy/infer", b"", headers)  # the head only: the body never comes
    status, headers, doc = exchange(hostile_server, request)
    assert status == 413 and str(BODY_LIMIT) in doc["error"]
    assert headers.get("connection", "").lower() == "close"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_decompression_bomb_is_refused_at_the_limit(hostile_server, encoding):
    inflated = b"\0" * (50 * BODY_LIMIT)  # 50 MB of zeros: a few tens of KB compressed
    body = gzip.compress(inflated) if encoding == "gzip" else zlib.compress(inflated)
    assert len(body) < BODY_LIMIT
    status, _, doc = exchange(
        hostile_server, post("/v2/models/dummy/infer", body, {"Content-Encoding": encoding})
    )
    assert status == 413 and "inflates to more than the limit" in doc["error"]
    assert_still_serving(hostile_server)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_supported_encodings_still_work(hostile_server, encoding):
    body = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": lambda b: b}[encoding](GOOD.encode())
    status, _, doc = exchange(
        hostile_server, post("/v2/models/dummy/infer", body, {"Content-Encoding": encoding})
    )
    assert status == 200 and doc["outputs"][0]["data"] == [2.0] * 10


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_an_unsupported_content_encoding_is_415_json(hostile_server, encoding):
    status, headers, doc = exchange(
        hostile_server, post("/v2/models/dummy/infer", b"xxxx", {"Content-Encoding": encoding})
    )
    assert status == 415 and headers["content-type"].startswith("application/json")
    assert "Content-Encoding" in doc["error"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        (gzip.compress(GOOD.encode())[:-6], "ends before"),
        (gzip.compress(GOOD.encode()) + b"junk", "after the end"),
        (b"this is not gzip at all", "not valid gzip"),
    ],
    ids=["truncated", "trailing", "garbage"],
)
def test_a_broken_gzip_body_is_400(hostile_server, body, fragment):
    status, _, doc = exchange(
        hostile_server, post("/v2/models/dummy/infer", body, {"Content-Encoding": "gzip"})
    )
    assert status == 400 and fragment in doc["error"]


# --- what the HTTP parser refuses comes back as JSON ---------------------------------------------

PARSER_ERRORS = {
    "lowercase method": b"get /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown method": b"FROB /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "request line over 8 KB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 KB": b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    "duplicate Content-Length": b"POST /v2/models/dummy/infer HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad chunk size": b"POST /v2/models/dummy/infer HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
}


@pytest.mark.parametrize("raw", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
def test_what_the_http_parser_refuses_is_a_json_error(hostile_server, raw):
    status, headers, doc = exchange(hostile_server, raw)
    assert 400 <= status < 500 and headers["content-type"].startswith("application/json")
    assert doc["error"].startswith("bad HTTP request")
    assert_still_serving(hostile_server)


# --- slow and idle clients ------------------------------------------------------------------------


def test_a_request_head_that_never_ends_gets_408_and_is_closed(hostile_server):
    with socket.create_connection(("127.0.0.1", hostile_server.rest_port), timeout=10) as s:
        s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408") and b'"error"' in data


def test_idle_and_half_sent_connections_cannot_keep_a_well_behaved_client_out(hostile_server):
    hogs = []
    try:
        for i in range(3 * MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", hostile_server.rest_port), timeout=10)
            if i % 2:
                s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")  # a head that never ends (slowloris)
            hogs.append(s)
        time.sleep(0.2)
        for _ in range(3):  # while every hog is still open (the head timeout has not passed)
            status, _, doc = exchange(
                hostile_server, post("/v2/models/dummy/infer", GOOD.encode()), timeout=5
            )
            assert status == 200 and doc["outputs"][0]["data"] == [2.0] * 10
    finally:
        for s in hogs:
            s.close()


# --- streams: the stream's own flow control, not "queue is full" ----------------------------------


def test_requests_pipelined_on_one_stream_are_all_answered_not_refused(hostile_server):
    client = grpcclient.InferenceServerClient(hostile_server.grpc_url)
    results, errors = [], []

    def callback(result, error):
        (errors if error is not None else results).append(error or result)

    client.start_stream(callback)
    total = 200
    try:
        for i in range(total):
            inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(np.full((1, 16), i, np.int32))
            inputs[1].set_data_from_numpy(np.ones((1, 16), np.int32))
            client.async_stream_infer("simple", inputs, request_id=str(i))
    finally:
        client.stop_stream()  # waits for the stream to end: every response has arrived
    assert not errors, [str(e) for e in errors[:3]]
    assert len(results) == total
    for result in results:
        i = int(result.get_response().id)
        assert (result.as_numpy("OUTPUT0") == i + 1).all()


def test_client_mistakes_are_not_logged_as_server_errors(hostile_server):
    exchange(hostile_server, PARSER_ERRORS["bad chunk size"])
    exchange(hostile_server, post("/v2/models/dummy/infer", b"{nope"))
    client_errors_were_not_logged_as_server_faults(hostile_server)


def live_on_a_new_connection(gw, channels: list):
    """ServerLive on a channel of its own (its own connection), kept in `channels` to be closed."""
    channel = grpc.insecure_channel(gw.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)])
    channels.append(channel)
    return channel.unary_unary(
        SERVICE + "ServerLive",
        request_serializer=pb.ServerLiveRequest.SerializeToString,
        response_deserializer=pb.ServerLiveResponse.FromString,
    )


def test_grpc_refuses_rpcs_past_max_concurrent_rpcs_and_serves_again_once_they_end(model_repo, tmp_path):
    model = ["--model_name", "dummy", "--model_path", str(model_repo / "dummy")]
    gw = start_test_gateway([*model, "--grpc_max_concurrent_rpcs", "2"], tmp_path / "gw.log")
    channel = grpc.insecure_channel(gw.grpc_url)
    live = channel.unary_unary(
        SERVICE + "ServerLive",
        request_serializer=pb.ServerLiveRequest.SerializeToString,
        response_deserializer=pb.ServerLiveResponse.FromString,
    )
    stream = channel.stream_stream(
        SERVICE + "ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    ends = [threading.Event() for _ in range(2)]
    try:
        # Two open streams are two RPCs in flight: each answers one request, then waits for its end.
        calls = []
        for end in ends:
            call = stream(_requests_until(end, dummy_request()), timeout=30)
            assert not next(call).error_message
            calls.append(call)
        with pytest.raises(grpc.RpcError) as refused:
            live(pb.ServerLiveRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for end, call in zip(ends, calls, strict=True):
            end.set()
            assert list(call) == []
        deadline = time.monotonic() + 10
        while True:  # the server counts an RPC out once its end has reached it
            try:
                assert live(pb.ServerLiveRequest(), timeout=5).live
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        for end in ends:
            end.set()
        channel.close()
        assert gw.stop() == 0


def _requests_until(end: threading.Event, request):
    yield request
    end.wait(30)


def test_grpc_refuses_connections_past_its_bound(model_repo, tmp_path):
    gw = start_test_gateway(
        ["--model_name", "dummy", "--model_path", str(model_repo / "dummy"), "--grpc_max_connections", "2"],
        tmp_path / "gw.log",
    )
    channels: list = []
    try:
        answers = []
        for _ in range(4):
            live = live_on_a_new_connection(gw, channels)
            try:
                answers.append(live(pb.ServerLiveRequest(), timeout=5).live)
            except grpc.RpcError as e:
                answers.append(e.code())
                # A refused channel keeps reconnecting in the background and would take the slot freed below
                # before the channel that is meant to get it.
                channels.pop().close()
        assert answers == [True, True, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
        channels.pop(0).close()  # a connection closes: room for a new one, once the server has seen it go
        deadline = time.monotonic() + 20
        while True:
            live = live_on_a_new_connection(gw, channels)
            try:
                assert live(pb.ServerLiveRequest(), timeout=2, wait_for_ready=True).live
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                channels.pop().close()  # refused: the closed one was not counted out yet
                time.sleep(0.2)
    finally:
        for channel in channels:
            channel.close()
        assert gw.stop() == 0


def test_a_new_connection_is_refused_with_503_only_when_every_open_one_is_busy(model_repo, tmp_path):
    gw = start_test_gateway(
        ["--model_name", "dummy", "--model_path", str(model_repo / "dummy"), "--rest_max_connections", "2"],
        tmp_path / "gw.log",
    )
    busy = []
    try:
        for _ in range(2):  # each in the middle of uploading a body: a request in progress, not idle
            s = socket.create_connection(("127.0.0.1", gw.rest_port), timeout=10)
            s.sendall(b"POST /v2/models/dummy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            busy.append(s)
        time.sleep(0.3)
        status, headers, doc = exchange(gw, post("/v2/models/dummy/infer", GOOD.encode()))
        assert status == 503 and "too many open connections" in doc["error"]
        busy.pop().close()  # one finishes: room again
        time.sleep(0.3)
        status, _, doc = exchange(gw, post("/v2/models/dummy/infer", GOOD.encode()))
        assert status == 200 and doc["outputs"][0]["data"] == [2.0] * 10
    finally:
        for s in busy:
            s.close()
        assert gw.stop() == 0


def test_a_raw_body_declared_as_json_is_refused(gateway_server):
    """`Inference-Header-Content-Length: 0` (the body is one raw input) contradicts a JSON Content-Type."""
    request = urllib.request.Request(
        f"http://{gateway_server.http_url}/v2/models/identity_bytes/infer",
        data=b"\x00",
        method="POST",
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=10)
    assert e.value.code == 400 and "application/octet-stream" in json.loads(e.value.read())["error"]
    request.remove_header("Content-type")
    request.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
