"""The kserve SDK's clients against a gateway. Run in a process of its own.

The kserve SDK's generated gRPC modules claim the same `inference.*` protobuf
names as tritonclient's, so the two cannot be imported in one process; the test
(tests/e2e/test_kserve_sdk.py) runs this script with `python -m` and reads its exit code.

    python -m tests.support.kserve_sdk_client rest|grpc HOST:PORT
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def _simple_inputs(binary: bool) -> tuple[list[InferInput], np.ndarray]:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = InferInput(name, [2, 16], "INT32")
        t.set_data_from_numpy(a, binary_data=binary)
        inputs.append(t)
    return inputs, a


def _bytes_input(binary: bool) -> tuple[InferInput, np.ndarray]:
    values = np.array([[b"alpha", b"beta", "\u00e9".encode()]], dtype=np.object_)
    t = InferInput("INPUT0", [1, 3], "BYTES")
    t.set_data_from_numpy(values, binary_data=binary)
    return t, values


def _scalar_inputs(binary: bool) -> list[InferInput]:
    """The demo `scalars` model: x FP32 [4], and the rank-0 inputs sr (INT64) and tag (BYTES), shape []."""
    x = InferInput("x", [4], "FP32")
    x.set_data_from_numpy(np.arange(1, 5, dtype=np.float32), binary_data=binary)
    sr = InferInput("sr", [], "INT64")
    sr.set_data_from_numpy(np.array(16000, np.int64), binary_data=binary)
    tag = InferInput("tag", [], "BYTES")
    tag.set_data_from_numpy(np.array(b"hello", dtype=np.object_), binary_data=binary)
    return [x, sr, tag]


def _check_scalars(response, transport: str) -> None:
    outputs = {o.name: o for o in response.outputs}
    _check(list(outputs["total"].shape) == [], f"{transport} scalar output has shape []")
    _check(
        float(np.asarray(outputs["total"].as_numpy()).reshape(())) == 160000.0, f"{transport} scalar value"
    )
    tag = np.asarray(outputs["tag_out"].as_numpy()).reshape(()).item()
    _check(tag in (b"hello", "hello"), f"{transport} BYTES scalar")


async def check_rest(url: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    base = f"http://{url}"
    try:
        _check(await client.is_server_live(base) is True, "REST server live")
        _check(await client.is_server_ready(base) is True, "REST server ready")
        _check(await client.is_model_ready(base, "simple") is True, "REST model ready")
        for binary in (False, True):
            inputs, a = _simple_inputs(binary)
            response = await client.infer(
                base, InferRequest("simple", inputs, request_id="k1"), model_name="simple"
            )
            outputs = {o.name: o.as_numpy() for o in response.outputs}
            _check(np.array_equal(outputs["OUTPUT0"], a + a), f"REST simple sum (binary={binary})")
            _check(np.array_equal(outputs["OUTPUT1"], a - a), f"REST simple difference (binary={binary})")
        t, values = _bytes_input(False)
        response = await client.infer(base, InferRequest("identity_bytes", [t]), model_name="identity_bytes")
        out = response.outputs[0].as_numpy()
        _check(
            [bytes(v) if not isinstance(v, str) else v.encode() for v in out.ravel()] == list(values.ravel()),
            "REST BYTES identity",
        )
        for binary in (False, True):
            response = await client.infer(
                base, InferRequest("scalars", _scalar_inputs(binary)), model_name="scalars"
            )
            _check_scalars(response, f"REST (binary={binary})")
        try:
            inputs, _ = _simple_inputs(False)
            await client.infer(base, InferRequest("nope", inputs), model_name="nope")
        except Exception as e:  # httpx.HTTPStatusError
            _check(
                getattr(getattr(e, "response", None), "status_code", None) == 404, "REST unknown model is 404"
            )
        else:
            raise AssertionError("an unknown model must fail")
    finally:
        await client.close()


async def check_grpc(url: str) -> None:
    client = InferenceGRPCClient(url, timeout=30)
    try:
        _check(await client.is_server_live() is True, "gRPC server live")
        _check(await client.is_server_ready() is True, "gRPC server ready")
        _check(await client.is_model_ready("simple") is True, "gRPC model ready")
        inputs, a = _simple_inputs(True)
        response = await client.infer(InferRequest("simple", inputs, request_id="k2"))
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        _check(np.array_equal(outputs["OUTPUT0"], a + a), "gRPC simple sum")
        _check(response.id == "k2", "gRPC request id echoed")
        b = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
        t = InferInput("b", [2, 10], "FP32")
        t.set_data_from_numpy(b)
        response = await client.infer(InferRequest("dummy", [t]))
        _check(np.allclose(response.outputs[0].as_numpy(), b + 1), "gRPC dummy")
        t, values = _bytes_input(True)
        response = await client.infer(InferRequest("identity_bytes", [t]))
        out = response.outputs[0].as_numpy()
        _check(
            [v if isinstance(v, bytes) else v.encode() for v in out.ravel()] == list(values.ravel()),
            "gRPC BYTES identity",
        )
        _check_scalars(await client.infer(InferRequest("scalars", _scalar_inputs(True))), "gRPC")
    finally:
        await client.close()


async def check_tls(mode: str, url: str, ca: str, cert: str | None, key: str | None) -> None:
    """Over TLS (mutual when a client certificate is given): health and one inference."""
    inputs, a = _simple_inputs(mode == "grpc-tls")
    if mode == "rest-tls":
        # RESTConfig's `cert` never reaches httpx (kserve 0.21 passes only `verify` on): the client
        # certificate goes in through an SSLContext, which `verify` accepts.
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
        config = RESTConfig(protocol="v2", retries=1, timeout=30, verify=context)
        client = InferenceRESTClient(config)
        base = f"https://{url}"
        try:
            _check(await client.is_server_ready(base) is True, "REST over TLS: server ready")
            response = await client.infer(base, InferRequest("simple", inputs), model_name="simple")
        finally:
            await client.close()
    else:
        grpc_client = InferenceGRPCClient(
            url, use_ssl=True, root_certificates=ca, private_key=key, certificate_chain=cert, timeout=30
        )
        try:
            _check(await grpc_client.is_server_ready() is True, "gRPC over TLS: server ready")
            response = await grpc_client.infer(InferRequest("simple", inputs))
        finally:
            await grpc_client.close()
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    _check(np.array_equal(outputs["OUTPUT0"], a + a), f"{mode}: simple sum")


async def check_image(mode: str, url: str, path: str) -> None:
    """One encoded image file sent to the image test model `bgr` (BYTES [1]); prints the output data."""
    t = InferInput("x", [1], "BYTES")
    t.set_data_from_numpy(np.array([open(path, "rb").read()], dtype=np.object_), binary_data=True)
    if mode == "rest-image":
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
        try:
            response = await client.infer(f"http://{url}", InferRequest("bgr", [t]), model_name="bgr")
        finally:
            await client.close()
    else:
        grpc_client = InferenceGRPCClient(url, timeout=30)
        try:
            response = await grpc_client.infer(InferRequest("bgr", [t]))
        finally:
            await grpc_client.close()
    out = response.outputs[0].as_numpy()
    _check(list(out.shape) == [1, 3, 8, 8], f"{mode}: the decoded image's planes")
    print(json.dumps(np.asarray(out, np.float32).ravel().tolist()))


async def check_pipeline(mode: str, url: str) -> None:
    """The test pipeline `chain` (x * 2 * 3, FP32 [N,4]) is a model to the SDK too."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    t = InferInput("x", [2, 4], "FP32")
    t.set_data_from_numpy(x, binary_data=mode == "rest-pipeline")
    if mode == "rest-pipeline":
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
        try:
            _check(await client.is_model_ready(f"http://{url}", "chain") is True, f"{mode}: ready")
            response = await client.infer(f"http://{url}", InferRequest("chain", [t]), model_name="chain")
        finally:
            await client.close()
    else:
        grpc_client = InferenceGRPCClient(url, timeout=30)
        try:
            _check(await grpc_client.is_model_ready("chain") is True, f"{mode}: ready")
            response = await grpc_client.infer(InferRequest("chain", [t]))
        finally:
            await grpc_client.close()
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    _check(np.array_equal(outputs["result"], x * 6), f"{mode}: the chain's result")
    _check(np.array_equal(outputs["intermediate"], x * 2), f"{mode}: the intermediate output")


if __name__ == "__main__":
    mode, address = sys.argv[1], sys.argv[2]
    if mode.endswith("-pipeline"):
        asyncio.run(check_pipeline(mode, address))
    elif mode.endswith("-image"):
        asyncio.run(check_image(mode, address, sys.argv[3]))
    elif mode.endswith("-tls"):
        ca, cert, key = sys.argv[3], *(sys.argv[4:6] or (None, None))
        asyncio.run(check_tls(mode, address, ca, cert, key))
    else:
        asyncio.run(check_rest(address) if mode == "rest" else check_grpc(address))
    print("all kserve SDK checks passed")
