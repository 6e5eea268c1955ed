"""Restricted APIs (Triton's model) on both transports: a restricted category answers only a call that
carries its header with the exact value; everything else gets PERMISSION_DENIED / 403 naming the header,
and the categories left open keep answering without one."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.servers import start_test_gateway

# Clients get copies: tritonclient's HTTP client adds its own headers to the dict it is given.
ADMIN = {"admin-key": "s3cret"}
INFER = {"infer-key": "abc"}


@pytest.fixture(scope="module")
def restricted_server(model_repo, tmp_path_factory):
    gw = start_test_gateway(
        [
            "--config_path", str(model_repo / "config.json"),
            "--restricted_api", "model-repository,model-config,statistics:Admin-Key=s3cret",
            "--restricted_api", "inference,metrics:infer-key=abc",
        ],
        tmp_path_factory.mktemp("restricted") / "gw.log",
    )  # fmt: skip
    yield gw
    assert gw.stop() == 0


def rest(gw, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    request = urllib.request.Request(
        f"http://{gw.http_url}{path}", data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


INFER_BODY = json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]})

RESTRICTED_REST = [
    ("POST", "/v2/repository/index", b"{}", ADMIN),
    ("POST", "/v2/repository/models/dummy/load", b"{}", ADMIN),
    ("POST", "/v1/config/reload", b"", ADMIN),
    ("GET", "/v2/models/dummy/config", None, ADMIN),
    ("GET", "/v2/models/stats", None, ADMIN),
    ("GET", "/v2/models/dummy/versions/1/stats", None, ADMIN),
    ("POST", "/v2/models/dummy/infer", INFER_BODY.encode(), INFER),
    ("GET", "/metrics", None, INFER),
]


@pytest.mark.parametrize(
    "method, path, body, key", RESTRICTED_REST, ids=[p for _, p, _, _ in RESTRICTED_REST]
)
def test_rest_restricted_calls_need_their_header(restricted_server, method, path, body, key):
    header = next(iter(key))
    for headers in ({}, {header: "wrong"}, {"other": key[header]}):
        status, text = rest(restricted_server, method, path, headers, body)
        assert status == 403, (headers, text)
        assert f"'{header}'" in json.loads(text)["error"]
    status, text = rest(restricted_server, method, path, {header.upper(): key[header]}, body)
    assert status == 200, text


@pytest.mark.parametrize(
    "path", ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/dummy", "/v2/models/dummy/ready"]
)
def test_rest_open_categories_need_no_header(restricted_server, path):
    assert rest(restricted_server, "GET", path)[0] == 200


def test_a_denied_call_does_not_read_or_run_the_request(restricted_server):
    """The body of a refused infer is not even parsed: a broken one still gets 403, not 400."""
    status, text = rest(restricted_server, "POST", "/v2/models/dummy/infer", {}, b"{broken")
    assert status == 403


def test_tritonclient_http_with_and_without_the_header(restricted_server):
    client = httpclient.InferenceServerClient(restricted_server.http_url)
    inputs = [httpclient.InferInput("b", [1, 10], "FP32")]
    inputs[0].set_data_from_numpy(np.zeros((1, 10), np.float32))
    with pytest.raises(InferenceServerException, match="infer-key"):
        client.infer("dummy", inputs)
    assert client.infer("dummy", inputs, headers=dict(INFER)).as_numpy("a").shape == (1, 10)
    assert client.is_server_ready()  # health is open


def test_tritonclient_grpc_with_and_without_the_metadata(restricted_server):
    client = grpcclient.InferenceServerClient(restricted_server.grpc_url)
    inputs = [grpcclient.InferInput("b", [1, 10], "FP32")]
    inputs[0].set_data_from_numpy(np.zeros((1, 10), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("dummy", inputs)
    assert "PERMISSION_DENIED" in str(e.value) and "infer-key" in str(e.value)
    assert client.infer("dummy", inputs, headers=dict(INFER)).as_numpy("a").shape == (1, 10)
    with pytest.raises(InferenceServerException, match="admin-key"):
        client.get_model_repository_index()
    assert client.get_model_repository_index(headers=dict(ADMIN)).models
    with pytest.raises(InferenceServerException, match="admin-key"):
        client.get_model_config("dummy")
    assert client.get_model_config("dummy", headers=dict(ADMIN)).config.name == "dummy"
    with pytest.raises(InferenceServerException, match="admin-key"):
        client.get_inference_statistics("dummy")
    assert client.is_server_live() and client.is_model_ready("dummy")
    assert client.get_model_metadata("dummy").name == "dummy"


@pytest.mark.parametrize(
    "metadata, allowed", [((), False), ((("infer-key", "abd"),), False), ((("infer-key", "abc"),), True)]
)
def test_a_grpc_stream_is_refused_without_the_metadata(restricted_server, metadata, allowed):
    channel = grpc.insecure_channel(restricted_server.grpc_url)
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    request = pb.ModelInferRequest(model_name="dummy")
    request.inputs.add(name="b", datatype="FP32", shape=[1, 10])
    request.raw_input_contents.append(np.zeros((1, 10), np.float32).tobytes())
    responses = stream(iter([request]), metadata=metadata, timeout=30)
    if allowed:
        (response,) = list(responses)
        assert not response.error_message and response.infer_response.model_name == "dummy"
    else:
        with pytest.raises(grpc.RpcError) as e:
            list(responses)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "infer-key" in e.value.details()


def test_the_startup_log_names_the_headers_but_never_their_values(restricted_server):
    log = restricted_server.log()
    assert "restricted APIs: inference (header 'infer-key')" in log
    assert "s3cret" not in log and "=abc" not in log
