"""Every row of the error table, sent as a real malformed request over raw gRPC and raw HTTP.

After each bad request a good one must still succeed: the server never dies on bad input.
"""

from __future__ import annotations

import gzip
import json
import struct

import aiohttp
import grpc
import numpy as np
import pytest

from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.raw_grpc import SERVICE, RawGrpc, dummy_request, simple_request


def _both_contents():
    req = dummy_request()
    req.inputs[0].contents.fp32_contents.extend([1.0] * 10)
    return req


def _raw_count_mismatch():
    req = simple_request()
    del req.raw_input_contents[1]
    return req


def _typed_only(values):
    req = pb.ModelInferRequest(model_name="dummy")
    req.inputs.add(name="b", datatype="FP32", shape=[1, 10]).contents.fp32_contents.extend(values)
    return req


def _no_data():
    req = pb.ModelInferRequest(model_name="dummy")
    req.inputs.add(name="b", datatype="FP32", shape=[1, 10])
    return req


def _bad_bytes_framing():
    req = pb.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 2])
    req.raw_input_contents.append(struct.pack("<I", 3) + b"abc" + struct.pack("<I", 99) + b"short")
    return req


GRPC_CASES = [
    # (case, request, status, fragments the message must name)
    ("unknown model", lambda: dummy_request(model="nope"), grpc.StatusCode.NOT_FOUND, ["nope"]),
    ("unknown version", lambda: dummy_request(version="9"), grpc.StatusCode.NOT_FOUND, ["9"]),
    (
        "non-numeric version",
        lambda: dummy_request(version="latest"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["latest"],
    ),
    (
        "wrong shape",
        lambda: simple_request(shape=(1, 8)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT0", "[-1,16]", "[1,8]"],
    ),
    ("wrong rank", lambda: simple_request(shape=(16,)), grpc.StatusCode.INVALID_ARGUMENT, ["INPUT0", "[16]"]),
    (
        "wrong datatype",
        lambda: simple_request(datatype="FP32"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT0", "INT32", "FP32"],
    ),
    (
        "unknown datatype",
        lambda: simple_request(datatype="FLOAT"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["FLOAT"],
    ),
    (
        "missing input",
        lambda: simple_request(names=("INPUT0",)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT1"],
    ),
    (
        "unknown input name",
        lambda: simple_request(names=("INPUT0", "INPUTX")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUTX"],
    ),
    (
        "duplicate input",
        lambda: simple_request(names=("INPUT0", "INPUT0")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["INPUT0"],
    ),
    (
        "content size mismatch",
        lambda: dummy_request(raw=b"\0" * 12),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'b'", "12", "40"],
    ),
    ("raw entries != inputs", _raw_count_mismatch, grpc.StatusCode.INVALID_ARGUMENT, ["raw_input_contents"]),
    ("raw and typed contents", _both_contents, grpc.StatusCode.INVALID_ARGUMENT, ["'b'", "both"]),
    (
        "typed contents count",
        lambda: _typed_only([1.0] * 3),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'b'", "3", "10"],
    ),
    ("no data", _no_data, grpc.StatusCode.INVALID_ARGUMENT, ["'b'", "no data"]),
    (
        "negative dimension",
        lambda: dummy_request(shape=(-1, 10), raw=b""),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'b'", "negative"],
    ),
    ("bad BYTES framing", _bad_bytes_framing, grpc.StatusCode.INVALID_ARGUMENT, ["INPUT0", "99"]),
]


@pytest.fixture(scope="module")
def raw_grpc(gateway_server):
    client = RawGrpc(gateway_server.grpc_url)
    yield client
    client.channel.close()


def _assert_good_grpc(client: RawGrpc):
    response = client.infer(dummy_request())
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [2.0] * 10


@pytest.mark.parametrize("case, build, status, fragments", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_error_table(raw_grpc, case, build, status, fragments):
    with pytest.raises(grpc.RpcError) as err:
        raw_grpc.infer(build())
    assert err.value.code() == status, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details(), (fragment, err.value.details())
    assert "Traceback" not in err.value.details()
    _assert_good_grpc(raw_grpc)


def test_grpc_metadata_errors(raw_grpc):
    with pytest.raises(grpc.RpcError) as err:
        raw_grpc.call("ModelMetadata", pb.ModelMetadataRequest(name="nope"), pb.ModelMetadataResponse)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        raw_grpc.call("ModelReady", pb.ModelReadyRequest(name="dummy", version="3"), pb.ModelReadyResponse)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_garbage_bytes_are_refused(gateway_server, raw_grpc):
    stub = raw_grpc.channel.unary_unary(SERVICE + "ModelInfer")  # no serializer: raw bytes on the wire
    with pytest.raises(grpc.RpcError) as err:
        stub(b"\xff\xff\xff\xff garbage", timeout=10)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    _assert_good_grpc(raw_grpc)


def test_grpc_inference_failure_is_internal(mixed_server):
    client = RawGrpc(mixed_server.grpc_url)
    req = pb.ModelInferRequest(model_name="runtime_reshape")
    req.inputs.add(name="DATA", datatype="FP32", shape=[6])
    req.raw_input_contents.append(np.ones(6, np.float32).tobytes())
    req.inputs.add(name="SHAPE", datatype="INT64", shape=[2])
    req.raw_input_contents.append(np.array([4, 4], np.int64).tobytes())
    with pytest.raises(grpc.RpcError) as err:
        client.infer(req)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in err.value.details()
    # the request that failed went back to the pool: the model still answers
    req.raw_input_contents[1] = np.array([2, 3], np.int64).tobytes()
    out = client.infer(req)
    assert list(out.outputs[0].shape) == [2, 3]
    client.channel.close()


def test_grpc_unavailable_version(mixed_server):
    client = RawGrpc(mixed_server.grpc_url)
    with pytest.raises(grpc.RpcError) as err:
        client.infer(dummy_request(model="half_broken", version="2"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    client.channel.close()


# --- REST ----------------------------------------------------------------------------------------

DUMMY_JSON = {"inputs": [{"name": "b", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10}]}


def _with(**changes):
    doc = json.loads(json.dumps(DUMMY_JSON))
    doc["inputs"][0].update(changes)
    return json.dumps(doc).encode()


REST_CASES = [
    # (case, path, body, headers, status, fragments)
    ("unknown model", "/v2/models/nope/infer", json.dumps(DUMMY_JSON).encode(), {}, 404, ["nope"]),
    ("unknown version", "/v2/models/dummy/versions/9/infer", json.dumps(DUMMY_JSON).encode(), {}, 404, ["9"]),
    (
        "non-numeric version",
        "/v2/models/dummy/versions/x1/infer",
        json.dumps(DUMMY_JSON).encode(),
        {},
        400,
        ["x1"],
    ),
    ("malformed JSON", "/v2/models/dummy/infer", b'{"inputs": [', {}, 400, ["JSON"]),
    ("not an object", "/v2/models/dummy/infer", b"[1, 2]", {}, 400, ["object"]),
    ("empty body", "/v2/models/dummy/infer", b"", {}, 400, ["empty"]),
    ("no inputs", "/v2/models/dummy/infer", b'{"inputs": []}', {}, 400, ["inputs"]),
    ("wrong shape", "/v2/models/dummy/infer", _with(shape=[1, 5], data=[0.0] * 5), {}, 400, ["b", "[1,5]"]),
    (
        "wrong datatype",
        "/v2/models/dummy/infer",
        _with(datatype="INT32", data=[0] * 10),
        {},
        400,
        ["FP32", "INT32"],
    ),
    ("wrong name", "/v2/models/dummy/infer", _with(name="c"), {}, 400, ["'c'"]),
    ("data count mismatch", "/v2/models/dummy/infer", _with(data=[0.0] * 9), {}, 400, ["9", "10"]),
    ("data not numbers", "/v2/models/dummy/infer", _with(data=["a"] * 10), {}, 400, ["FP32"]),
    ("shape not ints", "/v2/models/dummy/infer", _with(shape=["1", 10]), {}, 400, ["shape"]),
    (
        "header length too large",
        "/v2/models/dummy/infer",
        json.dumps(DUMMY_JSON).encode(),
        {"Inference-Header-Content-Length": "100000"},
        400,
        ["Inference-Header-Content-Length"],
    ),
    (
        "header length not a number",
        "/v2/models/dummy/infer",
        json.dumps(DUMMY_JSON).encode(),
        {"Inference-Header-Content-Length": "ten"},
        400,
        ["ten"],
    ),
    ("binary size beyond body", "/v2/models/dummy/infer", None, "binary-short", 400, ["binary_data_size"]),
    ("binary bytes left over", "/v2/models/dummy/infer", None, "binary-long", 400, ["4 bytes"]),
    ("corrupt gzip", "/v2/models/dummy/infer", b"not gzip at all", {"Content-Encoding": "gzip"}, 400, []),
]


def _binary_body(extra: int) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "b", "shape": [1, 10], "datatype": "FP32", "parameters": {"binary_data_size": 40}}
            ]
        }
    ).encode()
    raw = np.zeros(10, np.float32).tobytes()
    raw = raw[:extra] if extra < 0 else raw + b"\0" * extra
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


async def _post(session, base, path, body, headers):
    async with session.post(base + path, data=body, headers=headers) as r:
        return r.status, await r.read(), r.headers


async def _assert_good_rest(session, base):
    status, body, _ = await _post(
        session, base, "/v2/models/dummy/infer", json.dumps(DUMMY_JSON).encode(), {}
    )
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [1.0] * 10


@pytest.mark.parametrize(
    "case, path, body, headers, status, fragments", REST_CASES, ids=[c[0] for c in REST_CASES]
)
async def test_rest_error_table(gateway_server, case, path, body, headers, status, fragments):
    if headers == "binary-short":
        body, headers = _binary_body(-4)
    elif headers == "binary-long":
        body, headers = _binary_body(4)
    base = f"http://{gateway_server.http_url}"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        got, raw, _ = await _post(session, base, path, body, headers)
        assert got == status, raw
        error = json.loads(raw)["error"]
        assert isinstance(error, str) and "Traceback" not in error
        for fragment in fragments:
            assert fragment in error, (fragment, error)
        await _assert_good_rest(session, base)


async def test_rest_metadata_and_ready_errors(gateway_server, mixed_server):
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{gateway_server.http_url}/v2/models/nope") as r:
            assert r.status == 404 and "nope" in (await r.json())["error"]
        async with session.get(f"http://{gateway_server.http_url}/v2/models/nope/ready") as r:
            assert r.status == 404
        async with session.get(f"http://{mixed_server.http_url}/v2/models/half_broken/versions/2/ready") as r:
            assert r.status == 503 and (await r.json())["ready"] is False
        async with session.get(f"http://{mixed_server.http_url}/v2/models/half_broken/versions/2") as r:
            assert r.status == 503 and "version 2" in (await r.json())["error"]
        async with session.get(f"http://{gateway_server.http_url}/v2/no/such/route") as r:
            assert r.status == 404 and "error" in await r.json()


async def test_rest_inference_failure_is_500(mixed_server):
    doc = {
        "inputs": [
            {"name": "DATA", "shape": [6], "datatype": "FP32", "data": [1.0] * 6},
            {"name": "SHAPE", "shape": [2], "datatype": "INT64", "data": [4, 4]},
        ]
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://{mixed_server.http_url}/v2/models/runtime_reshape/infer", json=doc
        ) as r:
            assert r.status == 500
            assert "OpenVINO" in (await r.json())["error"]


async def test_rest_body_without_content_type_and_gzip(gateway_server):
    """tritonclient sends no Content-Type; gzip bodies are accepted."""
    base = f"http://{gateway_server.http_url}"
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
        body = gzip.compress(json.dumps(DUMMY_JSON).encode())
        status, raw, _ = await _post(
            session, base, "/v2/models/dummy/infer", body, {"Content-Encoding": "gzip"}
        )
        assert status == 200 and json.loads(raw)["outputs"][0]["data"] == [1.0] * 10


async def test_rest_raw_body_with_zero_header_length(gateway_server):
    """Inference-Header-Content-Length: 0 means the whole body is the single input."""
    base = f"http://{gateway_server.http_url}"
    raw = np.arange(20, dtype=np.float32).tobytes()
    async with aiohttp.ClientSession() as session:
        status, body, headers = await _post(
            session, base, "/v2/models/dummy/infer", raw, {"Inference-Header-Content-Length": "0"}
        )
    assert status == 200, body
    header_length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:header_length])
    assert header["outputs"][0]["shape"] == [2, 10]
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], np.float32), np.arange(20) + 1)


async def test_rest_nested_json_data(gateway_server):
    doc = {"inputs": [{"name": "b", "shape": [2, 10], "datatype": "FP32", "data": [[1.0] * 10, [2.0] * 10]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{gateway_server.http_url}/v2/models/dummy/infer", json=doc) as r:
            assert r.status == 200
            out = (await r.json())["outputs"][0]
    assert out["shape"] == [2, 10] and out["data"] == [2.0] * 10 + [3.0] * 10 and "parameters" not in out
