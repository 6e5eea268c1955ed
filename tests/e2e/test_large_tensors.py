"""Large tensors end to end: the paths that keep tensor bytes out of extra copies (REST bodies read into
one buffer and answered from the output arrays, gRPC contents kept out of protobuf) answer exactly."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.transports.rest.codec import STREAM_FROM_ARRAYS_BYTES

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
