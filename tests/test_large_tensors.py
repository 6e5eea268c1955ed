"""Large tensors end to end: the paths that keep tensor bytes out of extra copies (REST bodies read into
one buffer and answered from the output arrays, gRPC contents kept out of protobuf) answer exactly."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.rest_server import STREAM_FROM_ARRAYS_BYTES

LARGE = np.random.default_rng(3).standard_normal((64, 8192)).astype(np.float32)  # 2 MiB
assert LARGE.nbytes > 8 * STREAM_FROM_ARRAYS_BYTES


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_2_mib_tensor_round_trips_exactly(gateway_server, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = gateway_server.grpc_url if protocol == "grpc" else gateway_server.http_url
    client = module.InferenceServerClient(url)
    t = module.InferInput("INPUT0", list(LARGE.shape), "FP32")
    t.set_data_from_numpy(LARGE)
    for _ in range(3):  # infer requests are reused: each answer must be its own
        result = client.infer("identity_fp32", [t])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), LARGE)
    client.close()


def test_large_and_small_outputs_in_one_rest_response(gateway_server):
    """The binary section mixes outputs written from their arrays with JSON ones."""
    client = httpclient.InferenceServerClient(gateway_server.http_url)
    a = np.arange(LARGE.size, dtype=np.int32).reshape(LARGE.shape)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = httpclient.InferInput(name, [1, 16], "INT32")
        t.set_data_from_numpy(np.ones((1, 16), np.int32))
        inputs.append(t)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]  # fmt: skip
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2, np.int32))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.int32))
    big = httpclient.InferInput("INPUT0", list(a.shape), "INT32")
    big.set_data_from_numpy(a)
    np.testing.assert_array_equal(client.infer("identity_int32", [big]).as_numpy("OUTPUT0"), a)
    client.close()


@pytest.fixture(scope="module")
def rows_server(tmp_path_factory):
    """A model with a dynamic dimension 0 and 256 KB rows, served without dynamic batching: OpenVINO writes
    its output straight into the response's array (openvino_runtime.outputs_following_rows)."""
    import openvino as ov
    from openvino import opset13 as ops

    from gateway.demo_models import save
    from loadgen.gateway_process import start_gateway

    x = ops.parameter([-1, 64, 1024], ov.Type.f32, name="x")
    x.output(0).get_tensor().set_names({"x"})
    y = ops.add(ops.multiply(x, ops.constant(np.float32(2.0))), ops.constant(np.float32(1.0)))
    y.output(0).get_tensor().set_names({"y"})
    root = tmp_path_factory.mktemp("rows")
    save(ov.Model([y.output(0)], [x], "rows"), root / "rows" / "1")
    args = ["--model_name", "rows", "--model_path", str(root / "rows")]
    gw = start_gateway(args, tmp_path_factory.mktemp("logs") / "rows.log")
    yield gw
    gw.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_outputs_bound_by_the_request_rows_answer_each_request_exactly(rows_server, protocol):
    module = grpcclient if protocol == "grpc" else httpclient
    url = rows_server.grpc_url if protocol == "grpc" else rows_server.http_url
    client = module.InferenceServerClient(url)
    rng = np.random.default_rng(5)
    answers = []
    for rows in (1, 3, 2, 3):  # one infer request, rows changing: every answer sized and filled for its own
        x = rng.standard_normal((rows, 64, 1024)).astype(np.float32)
        t = module.InferInput("x", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        answers.append((x, client.infer("rows", [t]).as_numpy("y")))
    for x, y in answers:
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, x * 2 + 1)
    client.close()
