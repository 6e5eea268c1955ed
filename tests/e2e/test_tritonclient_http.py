"""tritonclient's HTTP clients (binary and JSON tensors, compression, aio) against a real gateway."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.support.datatype_samples import SAMPLES


@pytest.fixture(scope="module")
def client(gateway_server):
    c = httpclient.InferenceServerClient(gateway_server.http_url)
    yield c
    c.close()


def _input(name, array, binary=True, datatype=None):
    tensor = httpclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ovgw" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata(client):
    meta = client.get_model_metadata("dummy")
    assert meta == {
        "name": "dummy",
        "versions": ["1"],
        "platform": "OpenVINO",
        "inputs": [{"name": "b", "datatype": "FP32", "shape": [-1, 10]}],
        "outputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.is_model_ready("dummy") and client.is_model_ready("versioned", "1")


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_simple_binary_and_json(client, binary_in, binary_out):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.int32)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer(
        "simple",
        [_input("INPUT0", a, binary_in), _input("INPUT1", b, binary_in)],
        outputs=outputs,
        request_id="7",
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "7" and response["model_version"] == "1"
    for out in response["outputs"]:
        # Triton's C++ client fails on an output `parameters` object that lacks binary_data_size.
        assert ("parameters" in out) == binary_out
        if binary_out:
            assert set(out["parameters"]) == {"binary_data_size"}


def test_no_outputs_requested_returns_all_binary(client):
    a = np.ones((1, 16), dtype=np.int32)
    result = client.infer("simple", [_input("INPUT0", a), _input("INPUT1", a)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(client, algorithm):
    b = np.random.default_rng(1).random((3, 10), dtype=np.float32)
    result = client.infer(
        "dummy",
        [_input("b", b)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_allclose(result.as_numpy("a"), b + 1)


# tritonclient sends BF16 only as binary data, so BF16 has no JSON case.
IDENTITY_CASES = [(d, b) for d in sorted(SAMPLES) for b in (True, False) if not (d == "BF16" and not b)]


@pytest.mark.parametrize(
    "datatype, binary", IDENTITY_CASES, ids=[f"{d}-{'binary' if b else 'json'}" for d, b in IDENTITY_CASES]
)
def test_identity_roundtrip_every_datatype(client, datatype, binary):
    array = SAMPLES[datatype]
    out_req = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer(
        f"identity_{datatype.lower()}", [_input("INPUT0", array, binary, datatype)], outputs=out_req
    )
    out = result.as_numpy("OUTPUT0")
    if datatype == "BYTES" and not binary:
        out = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(out)
    assert out.shape == array.shape
    np.testing.assert_array_equal(out.astype(array.dtype), array)


def test_version_routing(client):
    x = np.ones((1, 4), dtype=np.float32)
    r2 = client.infer("versioned", [_input("x", x)], model_version="2")
    np.testing.assert_allclose(r2.as_numpy("y"), 2 * x)
    r1 = client.infer("versioned", [_input("x", x)], model_version="1")
    np.testing.assert_allclose(r1.as_numpy("y"), x)


def test_errors_carry_the_message(client):
    with pytest.raises(InferenceServerException) as err:
        client.infer(
            "simple",
            [_input("INPUT0", np.ones((1, 8), np.int32)), _input("INPUT1", np.ones((1, 8), np.int32))],
        )
    assert "Invalid input shape" in err.value.message() and "INPUT0" in err.value.message()


async def test_aio_client(gateway_server):
    client = aiohttpclient.InferenceServerClient(gateway_server.http_url)
    try:
        assert await client.is_server_ready()
        b = np.zeros((4, 10), dtype=np.float32)
        t = aiohttpclient.InferInput("b", [4, 10], "FP32")
        t.set_data_from_numpy(b)
        import asyncio

        results = await asyncio.gather(*(client.infer("dummy", [t]) for _ in range(16)))
        for r in results:
            np.testing.assert_allclose(r.as_numpy("a"), b + 1)
    finally:
        await client.close()


async def test_bf16_as_json_numbers(gateway_server):
    """tritonclient cannot send BF16 as JSON, but the protocol allows numbers: checked with a raw request."""
    import aiohttp

    doc = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BF16", "data": [1.0, -2.0, 0.5]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://{gateway_server.http_url}/v2/models/identity_bf16/infer", json=doc
        ) as r:
            assert r.status == 200, await r.text()
            out = (await r.json())["outputs"][0]
    assert out["datatype"] == "BF16" and out["shape"] == [1, 3] and out["data"] == [1.0, -2.0, 0.5]
