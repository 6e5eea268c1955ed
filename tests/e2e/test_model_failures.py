"""One bad model in a config never stops the others; each failure is reported with what was wrong."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def grpc_client(mixed_server):
    c = grpcclient.InferenceServerClient(mixed_server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http_client(mixed_server):
    c = httpclient.InferenceServerClient(mixed_server.http_url)
    yield c
    c.close()


def test_good_model_serves_beside_broken_ones(grpc_client):
    assert grpc_client.is_server_ready()
    b = np.zeros((1, 10), np.float32)
    t = grpcclient.InferInput("b", [1, 10], "FP32")
    t.set_data_from_numpy(b)
    np.testing.assert_allclose(grpc_client.infer("dummy", [t]).as_numpy("a"), b + 1)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("missing_path", ["missing_path", "base_path", "does/not/exist", "no such file"]),
        ("bad_device", ["bad_device", "target_device", "NPU.7", "available devices: CPU"]),
        ("empty_version", ["empty_version", "base_path", "hold no model file"]),
        ("unknown_key", ["unknown_key", "no_such_setting", "unknown key"]),
        ("wrong_type", ["wrong_type", "nireq", '"four"']),
    ],
)
def test_startup_log_names_model_field_and_value(mixed_server, grpc_client, http_client, model, expected):
    lines = [line for line in mixed_server.log().splitlines() if "ERROR" in line and f"'{model}'" in line]
    assert lines, f"no start-up error for {model}:\n{mixed_server.log()}"
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)
    # ... and the readiness and metadata APIs report it
    assert not grpc_client.is_model_ready(model)
    assert not http_client.is_model_ready(model)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_model_metadata(model)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert expected[1] in err.value.message()


def test_broken_version_is_unavailable_and_default_is_highest_ready(grpc_client, http_client):
    assert grpc_client.is_model_ready("half_broken", "1")
    assert not grpc_client.is_model_ready("half_broken", "2")
    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_model_metadata("half_broken", "2")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "version 2" in err.value.message()
    meta = http_client.get_model_metadata("half_broken")
    assert meta["versions"] == ["1", "2"]
    t = httpclient.InferInput("b", [1, 10], "FP32")
    t.set_data_from_numpy(np.ones((1, 10), np.float32))
    assert http_client.infer("half_broken", [t]).get_response()["model_version"] == "1"
