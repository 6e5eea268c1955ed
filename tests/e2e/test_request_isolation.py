"""Every request stands alone, end to end: a real gateway, real clients, real OpenVINO models.

- A malformed request never touches another client's answer, with dynamic batching on a dynamic-batch and
  on a static-batch (padded) model.
- Every failed request is counted, whatever stage it failed at, in OVMS's and Triton's metrics.
- A backend failure is logged once, with the model, version, batch size and OpenVINO's message.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from gateway.codecs.tensor import array_from_raw
from gateway.core.datatypes import BY_NAME
from gateway.demo_models import dummy_model, save, simple_model
from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.datatype_samples import SAMPLES
from tests.support.metrics import scrape, value
from tests.support.model_builders import runtime_reshape_model, static_simple_model
from tests.support.raw_grpc import RawGrpc
from tests.support.servers import start_test_gateway

BATCHING = {"max_batch_size": 8, "max_queue_delay_microseconds": 200_000}


@pytest.fixture(scope="module")
def isolation_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    save(simple_model(), root / "simple" / "1")
    save(static_simple_model(), root / "simple_static" / "1")
    save(dummy_model(), root / "dummy" / "1")
    save(runtime_reshape_model(), root / "runtime_reshape" / "1")
    entries = [
        {"name": "simple_dynamic", "base_path": "simple", **BATCHING},
        {"name": "simple_static", "base_path": "simple_static", **BATCHING, "max_batch_size": 4},
        {"name": "dummy", "base_path": "dummy"},
        {"name": "runtime_reshape", "base_path": "runtime_reshape"},
    ]
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    gw = start_test_gateway(["--config_path", str(config)], tmp_path_factory.mktemp("logs") / "isolation.log")
    yield gw
    gw.stop()


def _simple_inputs(module, input0: np.ndarray, input1: np.ndarray) -> list:
    inputs = []
    for name, array in (("INPUT0", input0), ("INPUT1", input1)):
        t = module.InferInput(name, list(array.shape), "INT32")
        t.set_data_from_numpy(array)
        inputs.append(t)
    return inputs


@pytest.mark.parametrize("model", ["simple_dynamic", "simple_static"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_malformed_request_never_touches_the_answers_batched_with_it(isolation_server, model, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = isolation_server.grpc_url if protocol == "grpc" else isolation_server.http_url

    def good(seed: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.arange(16, dtype=np.int32).reshape(1, 16) + 100 * seed
        b = np.full((1, 16), seed, np.int32)
        client = module.InferenceServerClient(url)
        try:
            result = client.infer(model, _simple_inputs(module, a, b))
            return result.as_numpy("OUTPUT0"), a + b
        finally:
            client.close()

    def bad() -> str:
        # INPUT0 carries 2 rows, INPUT1 one: dimension 0 disagrees.
        client = module.InferenceServerClient(url)
        try:
            a = np.ones((2, 16), np.int32)
            client.infer(model, _simple_inputs(module, a, np.ones((1, 16), np.int32)))
        except InferenceServerException as e:
            return f"{e.status()} {e.message()}"
        finally:
            client.close()
        return "no error"

    # The good requests and the bad one race into the same batching window (200 ms).
    with ThreadPoolExecutor(4) as pool:
        goods = [pool.submit(good, seed) for seed in (1, 2, 3)]
        refused = pool.submit(bad)
        results = [g.result(timeout=60) for g in goods]
        error = refused.result(timeout=60)
    for got, expected in results:
        np.testing.assert_array_equal(got, expected)  # exactly its own rows
    assert "Invalid batch size" in error and "INPUT0 has 2, INPUT1 has 1" in error, error
    assert error.startswith("StatusCode.INVALID_ARGUMENT") or error.startswith("400"), error


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_batch_over_the_limit_is_refused_before_it_is_queued(isolation_server, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = isolation_server.grpc_url if protocol == "grpc" else isolation_server.http_url
    client = module.InferenceServerClient(url)
    five = np.ones((5, 16), np.int32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("simple_static", _simple_inputs(module, five, five))
    assert "[1:4,16]" in caught.value.message() and "[5,16]" in caught.value.message()
    four = np.arange(64, dtype=np.int32).reshape(4, 16)
    result = client.infer("simple_static", _simple_inputs(module, four, four))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * four)
    client.close()


# --- failure accounting ---------------------------------------------------------------------------


def _dummy_grpc(raw: bytes | None = None, model: str = "dummy", shape=(1, 10)) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="b", datatype="FP32", shape=shape)
    req.raw_input_contents.append(raw if raw is not None else np.ones(shape, np.float32).tobytes())
    return req


def _reshape_grpc() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="runtime_reshape")
    req.inputs.add(name="DATA", datatype="FP32", shape=[6])
    req.inputs.add(name="SHAPE", datatype="INT64", shape=[2])
    req.raw_input_contents.append(np.ones(6, np.float32).tobytes())
    req.raw_input_contents.append(np.array([4, 4], np.int64).tobytes())  # 16 != 6: fails in OpenVINO
    return req


def _timed_out_json(model: str | None = None) -> dict:
    ones = {"datatype": "INT32", "shape": [1, 16]}
    doc: dict = {
        "inputs": [{"name": n, **ones, "data": [1] * 16} for n in ("INPUT0", "INPUT1")],
        "parameters": {"timeout": 1000},
    }
    if model is not None:  # the gRPC form: typed contents, a typed parameter
        doc = {
            "model_name": model,
            "inputs": [
                {"name": n, **ones, "contents": {"int_contents": [1] * 16}} for n in ("INPUT0", "INPUT1")
            ],
            "parameters": {"timeout": {"int64_param": 1000}},
        }
    return doc


RESHAPE_JSON = {
    "inputs": [
        {"name": "DATA", "datatype": "FP32", "shape": [6], "data": [1] * 6},
        {"name": "SHAPE", "datatype": "INT64", "shape": [2], "data": [4, 4]},
    ]
}


async def test_every_failed_request_is_counted_wherever_it_failed(isolation_server):
    gw = isolation_server
    before = scrape(gw)
    base = f"http://{gw.http_url}/v2/models"
    good_json = {"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [0] * 10}]}
    rest_failures = [
        # (what failed, path, body, headers, HTTP status)
        ("framing", "/dummy/infer", b"{}", {"Inference-Header-Content-Length": "many"}, 400),
        ("JSON", "/dummy/infer", b"{not json", {}, 400),
        (
            "decoding",
            "/dummy/infer",
            json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [1] * 3}]}),
            {},
            400,
        ),
        (
            "validation",
            "/dummy/infer",
            json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 3], "data": [1] * 3}]}),
            {},
            400,
        ),
        ("inference", "/runtime_reshape/infer", json.dumps(RESHAPE_JSON), {}, 500),
        ("unknown model", "/nope/infer", json.dumps(good_json), {}, 404),
    ]
    async with aiohttp.ClientSession() as session:
        for what, path, body, headers, status in rest_failures:
            async with session.post(base + path, data=body, headers=headers) as r:
                assert r.status == status, (what, await r.text())
                assert "error" in await r.json(), what
        async with session.post(base + "/dummy/infer", json=good_json) as r:
            assert r.status == 200
        # The queue: a 1 ms timeout on a model that holds a lone request 200 ms for its batch to fill.
        async with session.post(base + "/simple_dynamic/infer", json=_timed_out_json()) as r:
            assert r.status == 504, await r.text()
        async with session.get(base + "/dummy/versions/9") as r:  # metadata of an unknown version
            assert r.status == 404
        async with session.get(base + "/nope/ready") as r:
            assert r.status == 404

    raw = RawGrpc(gw.grpc_url)
    miscounted = _dummy_grpc()
    del miscounted.raw_input_contents[0]
    grpc_failures = [
        ("framing", miscounted, grpc.StatusCode.INVALID_ARGUMENT),
        ("decoding", _dummy_grpc(raw=b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT),
        ("validation", _dummy_grpc(shape=(1, 3), raw=np.ones(3, np.float32).tobytes()), None),
        ("inference", _reshape_grpc(), grpc.StatusCode.INTERNAL),
        ("unknown model", _dummy_grpc(model="nope"), grpc.StatusCode.NOT_FOUND),
    ]
    for what, request, status in grpc_failures:
        with pytest.raises(grpc.RpcError) as caught:
            raw.infer(request)
        assert status is None or caught.value.code() == status, (what, caught.value.details())
    raw.infer(_dummy_grpc())
    with pytest.raises(grpc.RpcError) as caught:
        raw.infer(json_format.ParseDict(_timed_out_json("simple_dynamic"), pb.ModelInferRequest()))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()
    garbage = raw.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError):
        garbage(b"\xff\xff\xff\xff not a message", timeout=10)
    with pytest.raises(grpc.RpcError):
        raw.call(
            "ModelMetadata", pb.ModelMetadataRequest(name="dummy", version="9"), pb.ModelMetadataResponse
        )
    # One failure on a stream: counted like a unary one.
    stream = raw.channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    answers = list(stream(iter([_dummy_grpc(raw=b"\0" * 4)]), timeout=30))
    assert len(answers) == 1 and "'b'" in answers[0].error_message
    raw.channel.close()

    after = scrape(gw)

    def delta(family, **labels):
        return value(after, family, **labels) - value(before, family, **labels)

    dummy = {"api": "KServe", "method": "ModelInfer", "name": "dummy", "version": "1"}
    reshape = {**dummy, "name": "runtime_reshape"}
    assert delta("ovms_requests_fail", interface="REST", **dummy) == 4
    assert delta("ovms_requests_fail", interface="gRPC", **dummy) == 4  # 3 unary + 1 on the stream
    assert delta("ovms_requests_success", interface="REST", **dummy) == 1
    assert delta("ovms_requests_success", interface="gRPC", **dummy) == 1
    assert delta("ovms_requests_fail", interface="REST", **reshape) == 1
    assert delta("ovms_requests_fail", interface="gRPC", **reshape) == 1
    # Triton's view of the same requests: invalid ones are OTHER, OpenVINO's failures BACKEND.
    assert delta("nv_inference_request_failure", model="dummy", version="1", reason="OTHER") == 8
    assert delta("nv_inference_request_failure", model="dummy", version="1", reason="BACKEND") == 0
    assert delta("nv_inference_request_failure", model="runtime_reshape", version="1", reason="BACKEND") == 2
    assert delta("nv_inference_request_success", model="dummy", version="1") == 2
    queued = {**dummy, "name": "simple_dynamic"}
    assert delta("ovms_requests_fail", interface="REST", **queued) == 1
    assert delta("ovms_requests_fail", interface="gRPC", **queued) == 1
    assert delta("nv_inference_request_failure", model="simple_dynamic", version="1", reason="REJECTED") == 2
    assert delta("ovgw_requests_timed_out", name="simple_dynamic", version="1") == 2
    # Request times cover the failed requests too.
    assert delta("ovms_request_time_us", interface="REST", name="dummy", version="1") == 5
    # Requests that named no served model or version: OVMS has no counter of that model to put them in.
    assert delta("ovgw_requests_unrouted", interface="REST", method="ModelInfer") == 1
    assert delta("ovgw_requests_unrouted", interface="REST", method="ModelMetadata") == 1
    assert delta("ovgw_requests_unrouted", interface="REST", method="ModelReady") == 1
    assert delta("ovgw_requests_unrouted", interface="gRPC", method="ModelInfer") == 2  # + unparseable
    assert delta("ovgw_requests_unrouted", interface="gRPC", method="ModelMetadata") == 1
    assert not any(s.labels.get("name") == "nope" for s in after["ovms_requests_fail"].samples)

    stats = httpclient.InferenceServerClient(gw.http_url).get_inference_statistics("dummy")
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] >= 8


def test_a_backend_failure_is_logged_once_with_its_context(isolation_server):
    gw = isolation_server
    client = httpclient.InferenceServerClient(gw.http_url)
    data = httpclient.InferInput("DATA", [6], "FP32")
    data.set_data_from_numpy(np.ones(6, np.float32))
    shape = httpclient.InferInput("SHAPE", [2], "INT64")
    shape.set_data_from_numpy(np.array([5, 5], np.int64))
    marker_before = gw.log().count("model 'runtime_reshape' version 1: inference failed")
    with pytest.raises(InferenceServerException) as caught:
        client.infer("runtime_reshape", [data, shape])
    client.close()
    message = caught.value.message()
    assert caught.value.status() == "500" and "OpenVINO inference failed" in message
    assert "\n" not in message and "Traceback" not in message and "Exception from" not in message
    lines = [
        line
        for line in gw.log().splitlines()
        if "model 'runtime_reshape' version 1: inference failed" in line
    ]
    assert len(lines) == marker_before + 1, lines  # once, not once per layer
    last = lines[-1]
    assert "ERROR" in last and "batch of 1 row(s) from 1 request(s)" in last and "OpenVINO" in last


# --- scalars, end to end ---------------------------------------------------------------------------


SCALARS_X = np.array([1.0, 2.0, 3.0, 4.0], np.float32)


def _scalar_inputs(module, scalar_shape: list[int], binary: bool = True) -> list:
    x = module.InferInput("x", [4], "FP32")
    sr = module.InferInput("sr", scalar_shape, "INT64")
    tag = module.InferInput("tag", scalar_shape, "BYTES")
    kwargs = {} if module is grpcclient else {"binary_data": binary}
    x.set_data_from_numpy(SCALARS_X, **kwargs)
    sr.set_data_from_numpy(np.array(16000, np.int64).reshape(scalar_shape), **kwargs)
    tag.set_data_from_numpy(np.array(b"hello", dtype=object).reshape(scalar_shape), **kwargs)
    return [x, sr, tag]


def _check_scalar_result(result, tag_value: object = b"hello") -> None:
    np.testing.assert_array_equal(result.as_numpy("y"), SCALARS_X * 16000)
    total = result.as_numpy("total")
    assert total.shape == () and total == SCALARS_X.sum() * 16000
    tag = result.as_numpy("tag_out")
    assert tag.shape == () and tag.item() == tag_value


@pytest.mark.parametrize("scalar_shape", [[], [1]], ids=["shape[]", "shape[1]"])
def test_scalars_over_tritonclient_grpc(gateway_server, scalar_shape):
    client = grpcclient.InferenceServerClient(gateway_server.grpc_url)
    _check_scalar_result(client.infer("scalars", _scalar_inputs(grpcclient, scalar_shape)))
    meta = client.get_model_metadata("scalars", as_json=True)
    assert {i["name"]: i.get("shape", []) for i in meta["inputs"]} == {"x": ["4"], "sr": [], "tag": []}
    config = client.get_model_config("scalars", as_json=True)["config"]
    sr = next(i for i in config["input"] if i["name"] == "sr")
    assert sr["dims"] == ["1"] and "reshape" in sr and sr["reshape"].get("shape", []) == []
    client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("scalar_shape", [[], [1]], ids=["shape[]", "shape[1]"])
def test_scalars_over_tritonclient_http(gateway_server, scalar_shape, binary):
    client = httpclient.InferenceServerClient(gateway_server.http_url)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("y", "total", "tag_out")]
    result = client.infer("scalars", _scalar_inputs(httpclient, scalar_shape, binary), outputs=outputs)
    _check_scalar_result(result, b"hello" if binary else "hello")  # tritonclient reads JSON BYTES as str
    config = client.get_model_config("scalars")
    sr = next(i for i in config["input"] if i["name"] == "sr")
    assert sr["dims"] == [1] and sr["reshape"] == {"shape": []}
    assert next(o for o in config["output"] if o["name"] == "total")["dims"] == [1]
    client.close()


@pytest.mark.parametrize("sr_data", [16000, [16000]], ids=["bare", "list"])
async def test_scalars_in_rest_json(gateway_server, sr_data):
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [4], "data": SCALARS_X.tolist()},
            {"name": "sr", "datatype": "INT64", "shape": [], "data": sr_data},
            {"name": "tag", "datatype": "BYTES", "shape": [], "data": "hello"},
        ]
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{gateway_server.http_url}/v2/models/scalars/infer", json=body) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["total"]["shape"] == [] and outputs["total"]["data"] == [float(SCALARS_X.sum() * 16000)]
    assert outputs["tag_out"] == {"name": "tag_out", "datatype": "BYTES", "shape": [], "data": ["hello"]}


def test_scalars_in_grpc_typed_contents(gateway_server):
    req = pb.ModelInferRequest(model_name="scalars")
    req.inputs.add(name="x", datatype="FP32", shape=[4]).contents.fp32_contents.extend(SCALARS_X.tolist())
    req.inputs.add(name="sr", datatype="INT64", shape=[]).contents.int64_contents.append(16000)
    req.inputs.add(name="tag", datatype="BYTES", shape=[]).contents.bytes_contents.append(b"hello")
    raw = RawGrpc(gateway_server.grpc_url)
    response = raw.infer(req)
    raw.channel.close()
    shapes = {o.name: list(o.shape) for o in response.outputs}
    assert shapes == {"y": [4], "total": [], "tag_out": []}
    contents = dict(zip((o.name for o in response.outputs), response.raw_output_contents, strict=True))
    assert np.frombuffer(contents["total"], np.float32)[0] == SCALARS_X.sum() * 16000
    assert contents["tag_out"] == struct.pack("<I", 5) + b"hello"


@pytest.mark.parametrize(
    "datatype", [name for name, dt in BY_NAME.items() if dt.contents_field], ids=lambda d: d.lower()
)
def test_typed_grpc_contents_of_every_datatype_round_trip(gateway_server, datatype):
    """tritonclient always sends raw contents; other clients send typed ones (BYTES included)."""
    values = SAMPLES[datatype][:1]  # shape [1, 3]
    req = pb.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
    field = getattr(
        req.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 3]).contents,
        BY_NAME[datatype].contents_field,
    )
    field.extend(values.ravel().tolist())
    raw = RawGrpc(gateway_server.grpc_url)
    response = raw.infer(req)
    raw.channel.close()
    out = array_from_raw("OUTPUT0", datatype, (1, 3), response.raw_output_contents[0])
    np.testing.assert_array_equal(out, values)
