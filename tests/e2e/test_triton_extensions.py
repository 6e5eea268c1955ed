"""Triton extensions via tritonclient: model configuration, statistics, model repository, streaming."""

from __future__ import annotations

import json
import os
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.demo_models import dummy_model, save, simple_model
from tests.support.servers import start_test_gateway


def _simple_inputs(module, batch=1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    inputs = [module.InferInput(n, [batch, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for t in inputs:
        t.set_data_from_numpy(a)
    return inputs, a


def test_server_metadata_lists_the_extensions(gateway_server):
    client = grpcclient.InferenceServerClient(gateway_server.grpc_url)
    extensions = set(client.get_server_metadata().extensions)
    client.close()
    assert {"model_configuration", "statistics", "model_repository", "binary_tensor_data"} <= extensions


# --- model_configuration ---------------------------------------------------------------------------


def test_http_model_config_is_complete(gateway_server):
    client = httpclient.InferenceServerClient(gateway_server.http_url)
    config = client.get_model_config("simple")
    client.close()
    assert config["name"] == "simple" and config["platform"] == "openvino" and config["backend"] == "openvino"
    assert config["max_batch_size"] > 0  # dimension 0 is dynamic: it is the batch
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]),
        ("INPUT1", "TYPE_INT32", [16]),
    ]
    assert [o["name"] for o in config["output"]] == ["OUTPUT0", "OUTPUT1"]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    # perf_analyzer's HTTP client reads these without checking they exist
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert config["response_cache"] == {"enable": False}


def test_grpc_model_config(gateway_server):
    client = grpcclient.InferenceServerClient(gateway_server.grpc_url)
    config = client.get_model_config("versioned", "1").config
    client.close()
    assert config.name == "versioned" and config.max_batch_size > 0
    assert list(config.input[0].dims) == [4]
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert config.instance_group[0].count >= 1


def test_model_config_unknown_model_is_not_found(gateway_server):
    client = grpcclient.InferenceServerClient(gateway_server.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("nope")
    client.close()
    assert err.value.status() == "StatusCode.NOT_FOUND"


# --- a gateway of its own for statistics and repository tests, whose state they change ------------


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    save(dummy_model(), root / "dummy" / "1")
    save(simple_model(), root / "simple" / "1")  # in the repository, but not in the config: not loaded
    outside = tmp_path_factory.mktemp("outside")
    save(simple_model(), outside / "secret" / "1")
    os.symlink(outside / "secret", root / "linked_out")
    (root / "config.json").write_text(
        json.dumps({"model_config_list": [{"config": {"name": "dummy", "base_path": "dummy"}}]})
    )
    gw = start_test_gateway(
        ["--config_path", str(root / "config.json")], tmp_path_factory.mktemp("logs") / "repo.log"
    )
    yield gw
    gw.stop()


def test_statistics_count_exactly_what_was_sent(repo_server):
    client = httpclient.InferenceServerClient(repo_server.http_url)
    before = client.get_inference_statistics("dummy")["model_stats"][0]
    b = np.zeros((3, 10), np.float32)
    t = httpclient.InferInput("b", [3, 10], "FP32")
    t.set_data_from_numpy(b)
    for _ in range(5):
        client.infer("dummy", [t])
    bad = httpclient.InferInput("b", [3, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((3, 5), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("dummy", [bad])
    after = client.get_inference_statistics("dummy", "1")["model_stats"][0]
    client.close()
    assert after["name"] == "dummy" and after["version"] == "1"

    def delta(key):
        return after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"]

    assert delta("success") == 5 and delta("fail") == 1
    assert delta("queue") == 5 and delta("compute_infer") == 5
    assert after["inference_count"] - before["inference_count"] == 15  # batch elements
    assert after["execution_count"] - before["execution_count"] == 5
    assert after["last_inference"] > 0
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][key]["ns"] > before["inference_stats"][key]["ns"]
    assert after["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])


def test_grpc_statistics_for_all_models(repo_server):
    client = grpcclient.InferenceServerClient(repo_server.grpc_url)
    stats = client.get_inference_statistics().model_stats
    client.close()
    assert {s.name for s in stats} >= {"dummy"} and all(s.version.isdigit() for s in stats)


def test_repository_index_load_infer_unload(repo_server):
    client = grpcclient.InferenceServerClient(repo_server.grpc_url)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["dummy"].state == "READY"
    assert index["simple"].state == "UNAVAILABLE" and index["simple"].reason == "not loaded"

    client.load_model("simple")
    assert client.is_model_ready("simple")
    inputs, a = _simple_inputs(grpcclient)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)

    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple", inputs)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    assert index[("simple", "1")].state == "UNAVAILABLE" and index[("simple", "1")].reason == "unloaded"
    ready_only = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert "simple" not in ready_only

    client.load_model("simple")  # and back
    assert client.is_model_ready("simple")
    client.close()


def test_load_with_an_ovms_config_entry(repo_server):
    client = httpclient.InferenceServerClient(repo_server.http_url)
    client.load_model("alias", config=json.dumps({"base_path": "simple", "nireq": 1}))
    assert client.is_model_ready("alias")
    assert client.get_model_config("alias")["instance_group"][0]["count"] == 1
    inputs, a = _simple_inputs(httpclient, batch=2)
    np.testing.assert_array_equal(client.infer("alias", inputs).as_numpy("OUTPUT1"), 0 * a)
    client.close()


@pytest.mark.parametrize(
    "name, config",
    [
        ("../outside", None),
        ("/etc", None),
        ("linked_out", None),
        ("ok_name", {"base_path": "../../etc"}),
        ("ok_name", {"base_path": "/etc"}),
        ("ok_name", {"base_path": "linked_out"}),
    ],
)
def test_load_refuses_paths_that_escape_the_repository(repo_server, name, config):
    client = grpcclient.InferenceServerClient(repo_server.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model(name, config=json.dumps(config) if config else None)
    client.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value.message()
    assert "outside the model repository" in err.value.message() or "relative path" in err.value.message()


def test_load_errors(repo_server):
    client = httpclient.InferenceServerClient(repo_server.http_url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("no_such_model")
    assert "no_such_model" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.load_model("dummy", config=json.dumps({"nireq": "many"}))
    assert "nireq" in err.value.message()
    assert client.is_model_ready("dummy")  # a failed reload leaves the serving version alone
    with pytest.raises(InferenceServerException):
        client.unload_model("never_heard_of_it")
    client.close()


def test_reload_applies_new_settings(repo_server):
    """Loading a loaded model again swaps in the new settings once the new version is ready."""
    client = httpclient.InferenceServerClient(repo_server.http_url)
    client.load_model("dummy", config=json.dumps({"base_path": "dummy", "nireq": 3}))
    assert client.get_model_config("dummy")["instance_group"][0]["count"] == 3
    client.load_model("dummy", config=json.dumps({"base_path": "dummy", "nireq": 1}))
    assert client.get_model_config("dummy")["instance_group"][0]["count"] == 1
    t = httpclient.InferInput("b", [1, 10], "FP32")
    t.set_data_from_numpy(np.ones((1, 10), np.float32))
    np.testing.assert_allclose(client.infer("dummy", [t]).as_numpy("a"), 2.0)
    client.close()


# --- ModelStreamInfer ------------------------------------------------------------------------------


def test_stream_infer_with_tritonclient(gateway_server):
    client = grpcclient.InferenceServerClient(gateway_server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs, a = _simple_inputs(grpcclient)
    for i in range(8):
        client.async_stream_infer("simple", inputs, request_id=str(i))
    bad = grpcclient.InferInput("INPUT0", [1, 8], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 8), np.int32))
    client.async_stream_infer("simple", [bad, inputs[1]], request_id="bad")
    got = [results.get(timeout=30) for _ in range(9)]
    client.stop_stream()
    client.close()
    ok = [r for r, e in got if e is None]
    errors = [e for r, e in got if e is not None]
    assert sorted(r.get_response().id for r in ok) == [str(i) for i in range(8)]
    for r in ok:
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), 2 * a)
    assert len(errors) == 1 and "Invalid input shape" in errors[0].message()


async def test_stream_infer_with_the_aio_client(gateway_server):
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(gateway_server.grpc_url)
    a = np.ones((1, 10), np.float32)

    async def requests():
        for i in range(5):
            t = aioclient.InferInput("b", [1, 10], "FP32")
            t.set_data_from_numpy(a * i)
            yield {"model_name": "dummy", "inputs": [t], "request_id": str(i)}

    seen = {}
    async for result, error in client.stream_infer(requests()):
        assert error is None
        seen[result.get_response().id] = result.as_numpy("a")
    await client.close()
    assert sorted(seen) == [str(i) for i in range(5)]
    for i, out in seen.items():
        np.testing.assert_allclose(out, a * int(i) + 1)
