"""`scalar_shape: [1]`: rank-0 tensors shown as Triton serves them, in metadata and responses, while
requests may send either shape; the default stays OVMS's `[]`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.servers import start_test_gateway


@pytest.fixture(scope="module")
def gw(model_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scalar-shape")
    models = [
        {"config": {"name": "scalars", "base_path": str(model_repo / "scalars"), "scalar_shape": [1]}},
        {"config": {"name": "scalars_ovms", "base_path": str(model_repo / "scalars")}},
    ]
    (folder / "config.json").write_text(json.dumps({"model_config_list": models}))
    server = start_test_gateway(["--config_path", str(folder / "config.json")], folder / "gw.log")
    yield server
    server.stop()


def _shapes(tensors) -> dict[str, list[int]]:
    return {t["name"]: t["shape"] for t in tensors}


def test_metadata_shows_rank_0_tensors_as_one_element(gw):
    meta = httpclient.InferenceServerClient(gw.http_url).get_model_metadata("scalars")
    assert _shapes(meta["inputs"]) == {"x": [4], "sr": [1], "tag": [1]}
    assert _shapes(meta["outputs"]) == {"y": [4], "total": [1], "tag_out": [1]}
    grpc_meta = grpcclient.InferenceServerClient(gw.grpc_url).get_model_metadata("scalars")
    assert {t.name: list(t.shape) for t in grpc_meta.inputs}["sr"] == [1]
    ovms = httpclient.InferenceServerClient(gw.http_url).get_model_metadata("scalars_ovms")
    assert _shapes(ovms["inputs"])["sr"] == [] and _shapes(ovms["outputs"])["total"] == []


@pytest.mark.parametrize("scalar", [[1], []])
def test_either_shape_is_taken_and_responses_follow_the_metadata(gw, scalar):
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    x = grpcclient.InferInput("x", [4], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3, 4], np.float32))
    sr = grpcclient.InferInput("sr", scalar, "INT64")
    sr.set_data_from_numpy(np.array(2, np.int64).reshape(scalar))
    tag = grpcclient.InferInput("tag", scalar, "BYTES")
    tag.set_data_from_numpy(np.array(b"hi", dtype=object).reshape(scalar))
    result = client.infer("scalars", [x, sr, tag])
    np.testing.assert_array_equal(result.as_numpy("y"), [2, 4, 6, 8])
    assert result.as_numpy("total").shape == (1,) and result.as_numpy("total")[0] == 20
    assert result.as_numpy("tag_out").shape == (1,)
    ovms = client.infer("scalars_ovms", [x, sr, tag])
    assert ovms.as_numpy("total").shape == ()


def test_a_bad_value_is_refused_at_start(model_repo, tmp_path):
    from gateway.config.settings import read_config_file

    entry = {"name": "s", "base_path": str(model_repo / "scalars"), "scalar_shape": [2]}
    (tmp_path / "config.json").write_text(json.dumps({"model_config_list": [{"config": entry}]}))
    config = read_config_file(str(tmp_path / "config.json"))
    assert "field 'scalar_shape' = [2]: [] or [1] is required" in config.model_errors["s"]
