"""tritonclient's gRPC clients (sync and aio) against a real gateway, on the demo models."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.support.datatype_samples import SAMPLES


@pytest.fixture(scope="module")
def client(gateway_server):
    c = grpcclient.InferenceServerClient(gateway_server.grpc_url)
    yield c
    c.close()


def _input(name, array, datatype=None):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "ovgw" and meta.version
    assert "binary_tensor_data" in meta.extensions


def test_model_ready_and_metadata(client):
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    meta = client.get_model_metadata("simple")
    assert meta.name == "simple" and list(meta.versions) == ["1"] and meta.platform == "OpenVINO"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert [t.name for t in meta.outputs] == ["OUTPUT0", "OUTPUT1"]


def test_simple_sum_and_difference(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    result = client.infer("simple", [_input("INPUT0", a), _input("INPUT1", b)], request_id="req-42")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "req-42"
    assert response.model_name == "simple" and response.model_version == "1"


def test_dynamic_batch_dimension_accepts_any_size(client):
    a = np.random.default_rng(0).integers(-100, 100, (7, 16), dtype=np.int32)
    result = client.infer("simple", [_input("INPUT0", a), _input("INPUT1", a)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


def test_requested_output_filtering(client):
    a = np.ones((2, 16), dtype=np.int32)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", [_input("INPUT0", a), _input("INPUT1", a)], outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((2, 16), np.int32))


def test_dummy_model(client):
    b = np.arange(20, dtype=np.float32).reshape(2, 10)
    result = client.infer("dummy", [_input("b", b)])
    np.testing.assert_allclose(result.as_numpy("a"), b + 1)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_identity_roundtrip_every_datatype(client, datatype):
    array = SAMPLES[datatype]
    result = client.infer(f"identity_{datatype.lower()}", [_input("INPUT0", array, datatype)])
    out = result.as_numpy("OUTPUT0")
    assert result.get_response().outputs[0].datatype == datatype
    np.testing.assert_array_equal(out.astype(array.dtype), array)
    assert out.shape == array.shape


def test_versions_answer_differently(client):
    x = np.ones((1, 4), dtype=np.float32)
    meta = client.get_model_metadata("versioned")
    assert list(meta.versions) == ["1", "2"]
    v1 = client.infer("versioned", [_input("x", x)], model_version="1")
    v2 = client.infer("versioned", [_input("x", x)], model_version="2")
    latest = client.infer("versioned", [_input("x", x)])
    np.testing.assert_allclose(v1.as_numpy("y"), x * 1)
    np.testing.assert_allclose(v2.as_numpy("y"), x * 2)
    assert latest.get_response().model_version == "2"


def test_unknown_model_is_not_found(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in err.value.message()


async def test_aio_client(gateway_server):
    client = aiogrpcclient.InferenceServerClient(gateway_server.grpc_url)
    try:
        assert await client.is_server_ready()
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            t = aiogrpcclient.InferInput(name, [2, 16], "INT32")
            t.set_data_from_numpy(a)
            inputs.append(t)
        import asyncio

        results = await asyncio.gather(*(client.infer("simple", inputs) for _ in range(16)))
        for r in results:
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), 2 * a)
    finally:
        await client.close()
