"""OVMS pipelines (DAGs) served by a real gateway, driven by real clients: tritonclient gRPC (unary and
stream) and HTTP (JSON and binary), the kserve SDK's REST client, and perf_analyzer.

The models are built with OpenVINO's API and the C custom node with gcc (tests/support/pipeline_builders.py):
the super-resolution flow with a dynamic and a fixed demultiplexer, a C and a Python resize node,
batching on the model node; a model-only chain with aliases and a pinned version; a gather.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.kserve_sdk import run_kserve_sdk_client
from tests.support.perf_analyzer import assert_report, run_pa
from tests.support.pipeline_builders import HIGH, build_pipeline_repository, expected_super_resolution
from tests.support.servers import start_test_gateway

IMAGE = (1, 3, HIGH, HIGH)


@pytest.fixture(scope="module")
def pipeline_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    try:
        config = build_pipeline_repository(root)
    except RuntimeError as e:
        pytest.skip(str(e))
    gw = start_test_gateway(["--config_path", str(config)], root / "gw.log")
    yield gw
    code = gw.stop()
    assert code == 0, gw.log()[-3000:]


@pytest.fixture(scope="module")
def grpc_client(pipeline_server):
    client = grpcclient.InferenceServerClient(pipeline_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(pipeline_server):
    client = httpclient.InferenceServerClient(pipeline_server.http_url)
    yield client
    client.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *IMAGE), dtype=np.float32)


def grpc_input(name, array):
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def http_input(name, array, binary=True):
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_metadata_derived_from_the_nodes(grpc_client, http_client):
    meta = grpc_client.get_model_metadata("sr_dynamic")
    assert list(meta.versions) == ["1"]
    # the request demultiplexes (dynamic: -1), the C node takes any H and W, the gather adds dimension 0
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("images", "FP32", [-1, 1, 3, -1, -1])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("enhanced", "FP32", [-1, 1, 3, HIGH, HIGH])
    ]
    fixed = http_client.get_model_metadata("sr_fixed")
    assert fixed["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [4, 1, 3, -1, -1]}]
    assert fixed["outputs"] == [{"name": "enhanced", "datatype": "FP32", "shape": [4, 1, 3, HIGH, HIGH]}]
    gather = http_client.get_model_metadata("gather")
    assert gather["inputs"][0]["shape"] == [-1, 4] and gather["outputs"][0]["shape"] == [1, 4]
    assert grpc_client.is_model_ready("sr_dynamic") and http_client.is_model_ready("sr_dynamic")
    # OVMS ignores the version a request names for a pipeline
    assert grpc_client.is_model_ready("sr_dynamic", "7")


@pytest.mark.parametrize("pipeline", ["sr_dynamic", "sr_python", "sr_batched"])
@pytest.mark.parametrize("count", [1, 3])
def test_super_resolution_over_grpc(grpc_client, pipeline, count):
    batch = images(count, seed=count)
    result = grpc_client.infer(pipeline, [grpc_input("images", batch)])
    np.testing.assert_allclose(result.as_numpy("enhanced"), expected_super_resolution(batch), rtol=1e-6)
    assert result.get_response().model_version == "1"


@pytest.mark.parametrize("binary", [True, False])
def test_super_resolution_over_http(http_client, binary):
    batch = images(2, seed=5)
    result = http_client.infer(
        "sr_dynamic",
        [http_input("images", batch, binary)],
        outputs=[httpclient.InferRequestedOutput("enhanced", binary_data=binary)],
    )
    np.testing.assert_allclose(result.as_numpy("enhanced"), expected_super_resolution(batch), rtol=1e-6)


def test_fixed_demultiply_count(grpc_client):
    batch = images(4, seed=9)
    result = grpc_client.infer("sr_fixed", [grpc_input("images", batch)])
    np.testing.assert_allclose(result.as_numpy("enhanced"), expected_super_resolution(batch), rtol=1e-6)
    with pytest.raises(InferenceServerException) as e:
        grpc_client.infer("sr_fixed", [grpc_input("images", images(3))])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Expected: [4,1,3,-1,-1]" in e.value.message() and "images" in e.value.message()


def test_sixteen_images_through_a_batching_model_node(grpc_client):
    before = grpc_client.get_inference_statistics("super_resolution_batched", as_json=True)
    batch = images(16, seed=16)
    result = grpc_client.infer("sr_batched", [grpc_input("images", batch)])
    np.testing.assert_allclose(result.as_numpy("enhanced"), expected_super_resolution(batch), rtol=1e-6)
    after = grpc_client.get_inference_statistics("super_resolution_batched", as_json=True)

    def counts(stats):
        s = stats["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    inferred = counts(after)[0] - counts(before)[0]
    executions = counts(after)[1] - counts(before)[1]
    assert inferred == 16
    assert executions < 16  # the branches of one request met in the model's batcher


def test_a_request_with_more_branches_than_the_model_queue_holds(grpc_client):
    # super_resolution's queue holds 64 requests (the default for its parallelism): the 100 branches of one
    # admitted request wait for room instead of refusing each other
    batch = images(100, seed=100)
    result = grpc_client.infer("sr_dynamic", [grpc_input("images", batch)], client_timeout=120)
    np.testing.assert_allclose(result.as_numpy("enhanced"), expected_super_resolution(batch), rtol=1e-6)


def test_grpc_stream(grpc_client, pipeline_server):
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(pipeline_server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        batches = [images(n, seed=20 + n) for n in (1, 2, 3)]
        for batch in batches:
            client.async_stream_infer("sr_dynamic", [grpc_input("images", batch)])
        answers = [results.get(timeout=30) for _ in batches]
    finally:
        client.stop_stream()
        client.close()
    got = sorted((r.as_numpy("enhanced") for r, err in answers if err is None), key=len)
    assert len(got) == 3
    for batch, answer in zip(batches, got, strict=True):
        np.testing.assert_allclose(answer, expected_super_resolution(batch), rtol=1e-6)


def png(seed: int) -> tuple[bytes, np.ndarray]:
    """An 8x8 PNG and its BGR planes [3,8,8] as float32 (what the `bgr` model gives back)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes(), pixels.transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_encoded_images_into_a_pipeline(grpc_client, http_client, transport):
    files, planes = zip(*(png(seed) for seed in range(3)), strict=True)

    def send(pipeline, images):
        data = np.array(list(images), dtype=np.object_)
        if transport == "grpc":
            tensor = grpcclient.InferInput("image", [len(images)], "BYTES")
            tensor.set_data_from_numpy(data)
            return grpc_client.infer(pipeline, [tensor]).as_numpy("planes")
        tensor = httpclient.InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(data, binary_data=True)
        return http_client.infer(pipeline, [tensor]).as_numpy("planes")

    np.testing.assert_array_equal(send("images_single", files[:1]), planes[0][np.newaxis])
    # with demultiplexing at the entry, each image is a branch: N images, N planes [1,3,8,8] gathered
    np.testing.assert_array_equal(send("images_demux", files), np.stack(planes)[:, np.newaxis])
    with pytest.raises(InferenceServerException) as e:
        send("images_demux", [b"not an image"])
    assert "image" in e.value.message() and e.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")


def test_model_chain_with_aliases_and_a_pinned_version(grpc_client, http_client):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = grpc_client.infer("chain", [grpc_input("x", x)])
    # `double` version 2 multiplies by 20: the node pinned to version 1 must not use it
    np.testing.assert_array_equal(result.as_numpy("intermediate"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("result"), x * 6)
    only = http_client.infer(
        "chain", [http_input("x", x)], outputs=[httpclient.InferRequestedOutput("result")]
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["result"]


def test_gather_from_node(grpc_client):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = grpc_client.infer("gather", [grpc_input("x", x)])
    np.testing.assert_array_equal(result.as_numpy("total"), (x * 6).sum(axis=0, keepdims=True))


@pytest.mark.parametrize(
    "pipeline, library", [("sr_failing", "resize_c"), ("sr_python_failing", "resize_py")]
)
def test_a_failing_custom_node_names_itself(grpc_client, http_client, pipeline, library):
    batch = -images(2)  # the nodes refuse a negative first pixel
    with pytest.raises(InferenceServerException) as e:
        grpc_client.infer(pipeline, [grpc_input("images", batch)])
    assert e.value.status() == "StatusCode.INTERNAL"
    message = e.value.message()
    assert f"pipeline '{pipeline}' node 'resize'" in message and library in message
    with pytest.raises(InferenceServerException) as e:
        http_client.infer(pipeline, [http_input("images", batch)])
    assert e.value.status() == "500" and "node 'resize'" in e.value.message()
    # and the same pipeline serves the next good request
    good = images(1)
    result = grpc_client.infer(pipeline, [grpc_input("images", good)])
    np.testing.assert_allclose(result.as_numpy("enhanced"), expected_super_resolution(good), rtol=1e-6)


def test_bad_requests_are_client_errors(grpc_client, http_client):
    cases = [
        ([grpc_input("wrong", images(1))], "unexpected input 'wrong'"),
        ([grpc_input("images", np.zeros((1, 3, HIGH, HIGH), np.float32))], "Invalid input shape"),
        ([grpc_input("images", np.zeros((0, *IMAGE), np.float32))], "no branch to run"),
    ]
    for inputs, expected in cases:
        with pytest.raises(InferenceServerException) as e:
            grpc_client.infer("sr_dynamic", inputs)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value.message()
        assert expected in e.value.message()
    ints = httpclient.InferInput("images", list(IMAGE), "INT32")
    ints.set_data_from_numpy(np.zeros((1, 3, HIGH, HIGH), np.int32).reshape(1, 3, HIGH, HIGH))
    with pytest.raises(InferenceServerException) as e:
        http_client.infer("chain", [ints])
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException) as e:
        grpc_client.infer(
            "chain",
            [grpc_input("x", np.zeros((1, 4), np.float32))],
            outputs=[grpcclient.InferRequestedOutput("nope")],
        )
    assert "unexpected output 'nope'" in e.value.message()


def test_a_broken_pipeline_is_not_ready_and_the_rest_serves(grpc_client, http_client, pipeline_server):
    assert not grpc_client.is_model_ready("broken")
    assert not http_client.is_model_ready("broken")
    for call in (
        lambda: grpc_client.get_model_metadata("broken"),
        lambda: grpc_client.infer("broken", [grpc_input("x", np.zeros((1, 4), np.float32))]),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert "no_such_model" in e.value.message() and "node 'missing'" in e.value.message()
    try:
        urllib.request.urlopen(f"http://{pipeline_server.http_url}/v2/models/broken")
        raise AssertionError("metadata of a broken pipeline answered")
    except urllib.error.HTTPError as e:
        assert e.code == 503 and "no_such_model" in json.loads(e.read())["error"]
    index = {m["name"]: m for m in http_client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE" and index["sr_dynamic"]["state"] == "READY"
    assert grpc_client.is_model_ready("super_resolution")


def test_model_config_statistics_and_metrics(grpc_client, http_client, pipeline_server):
    config = grpc_client.get_model_config("sr_fixed", as_json=True)["config"]
    assert config["name"] == "sr_fixed" and int(config.get("max_batch_size", 0)) == 0
    assert [int(d) for d in config["input"][0]["dims"]] == [4, 1, 3, -1, -1]
    grpc_client.infer("chain", [grpc_input("x", np.ones((1, 4), np.float32))])
    stats = http_client.get_inference_statistics("chain")["model_stats"]
    assert stats[0]["name"] == "chain" and stats[0]["inference_stats"]["success"]["count"] >= 1
    metrics = urllib.request.urlopen(f"http://{pipeline_server.http_url}/metrics").read().decode()
    assert re.search(r'ovms_requests_success\{[^}]*name="chain"[^}]*\} [1-9]', metrics), metrics[-2000:]


@pytest.mark.parametrize("mode", ["rest-pipeline", "grpc-pipeline"])
def test_kserve_sdk_clients(pipeline_server, mode):
    # a process of its own: the kserve SDK and tritonclient cannot share one (see test_kserve_sdk.py)
    address = pipeline_server.http_url if mode.startswith("rest") else pipeline_server.grpc_url
    run_kserve_sdk_client(mode, address)


@pytest.mark.parametrize(
    "pipeline, transport, count",
    [("sr_fixed", "grpc", 4), ("sr_dynamic", "http", 2)],
)
def test_perf_analyzer_drives_a_pipeline(pipeline_server, perf_analyzer, pipeline, transport, count):  # noqa: F811
    url = pipeline_server.grpc_url if transport == "grpc" else pipeline_server.http_url
    output = run_pa(
        perf_analyzer,
        "-m",
        pipeline,
        "-u",
        url,
        "-i",
        transport,
        "--shape",
        f"images:{count},1,3,{HIGH},{HIGH}",
    )
    assert_report(output)


def test_rest_raw_body_is_the_one_input_of_a_pipeline(pipeline_server):
    """`Inference-Header-Content-Length: 0`: the whole body is the pipeline's one input (OVMS's raw form)."""
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    request = urllib.request.Request(
        f"http://{pipeline_server.http_url}/v2/models/chain/infer",
        data=x.tobytes(),
        method="POST",
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        header_length = int(response.headers["Inference-Header-Content-Length"])
        body = response.read()
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["result", "intermediate"]
    size = header["outputs"][0]["parameters"]["binary_data_size"]
    result = np.frombuffer(body[header_length : header_length + size], np.float32).reshape(1, 4)
    np.testing.assert_array_equal(result, x * 6)


async def test_tritonclient_aio_grpc(pipeline_server):
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(pipeline_server.grpc_url)
    try:
        x = np.ones((3, 4), np.float32)
        tensor = aioclient.InferInput("x", [3, 4], "FP32")
        tensor.set_data_from_numpy(x)
        results = await asyncio.gather(*(client.infer("gather", [tensor]) for _ in range(4)))
        for result in results:
            np.testing.assert_array_equal(result.as_numpy("total"), (x * 6).sum(axis=0, keepdims=True))
    finally:
        await client.close()


def test_the_demo_repository_serves_a_pipeline(gateway_server):
    client = httpclient.InferenceServerClient(gateway_server.http_url)
    try:
        b = np.arange(20, dtype=np.float32).reshape(2, 10)
        result = client.infer("dummy_twice", [http_input("b", b)])
        np.testing.assert_array_equal(result.as_numpy("a"), b + 2)
        assert client.get_model_metadata("dummy_twice")["inputs"] == [
            {"name": "b", "datatype": "FP32", "shape": [-1, 10]}
        ]
    finally:
        client.close()
