"""Pipelines and custom node libraries under hot reload (OVMS's POST /v1/config/reload), against a real
gateway: added, changed and removed like models, blue/green for requests in flight, and a reload of a
model a pipeline uses does not fail the pipeline's requests."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.demo_models import save, scaled_model
from loadgen.custom_nodes import NODES
from tests.support.model_builders import busy_model
from tests.support.servers import start_test_gateway

SLOW_MATMULS = 60  # a busy row takes some milliseconds: requests are in flight while the config changes


def node(name, model, source, item="y", out="y", **extra):
    return {
        "name": name,
        "type": "DL model",
        "model_name": model,
        "inputs": [{("X" if model == "busy" else "x"): {"node_name": source[0], "data_item": source[1]}}],
        "outputs": [{"data_item": out, "alias": item}],
        **extra,
    }


def write_config(path, models, pipelines, libraries=()):
    path.write_text(
        json.dumps(
            {
                "model_config_list": [
                    {"config": {"name": m, "base_path": m, **extra}} for m, extra in models.items()
                ],
                "pipeline_config_list": pipelines,
                "custom_node_library_config_list": list(libraries),
            }
        )
    )


def reload(gw) -> dict:
    request = urllib.request.Request(f"http://{gw.http_url}/v1/config/reload", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"{}")


def infer(client, name, x, output):
    t = grpcclient.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return client.infer(name, [t], client_timeout=60).as_numpy(output)


CHAIN = {
    "name": "chain",
    "inputs": ["x"],
    "nodes": [node("first", "double", ("request", "x"), "d"), node("second", "triple", ("first", "d"), "t")],
    "outputs": [{"out": {"node_name": "second", "data_item": "t"}}],
}


@pytest.fixture
def repo(tmp_path):
    save(scaled_model(2.0), tmp_path / "double" / "1")
    save(scaled_model(3.0), tmp_path / "triple" / "1")
    save(busy_model(SLOW_MATMULS), tmp_path / "busy" / "1")
    return tmp_path


def test_pipelines_and_libraries_follow_the_config(repo):
    config = repo / "config.json"
    models = {"double": {}, "triple": {}}
    # `later` names a model that is not configured yet: not ready until it is
    later = {
        "name": "later",
        "inputs": ["x"],
        "nodes": [node("n", "quadruple", ("request", "x"))],
        "outputs": [{"out": {"node_name": "n", "data_item": "y"}}],
    }
    write_config(config, models, [CHAIN, later])
    gw = start_test_gateway(
        ["--config_path", str(config), "--file_system_poll_wait_seconds", "0"], repo / "gw.log"
    )
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    x = np.ones((1, 4), np.float32)
    try:
        np.testing.assert_array_equal(infer(client, "chain", x, "out"), x * 6)
        assert not client.is_model_ready("later")

        # the model `later` needs arrives: the pipeline becomes ready with it
        save(scaled_model(4.0), repo / "quadruple" / "1")
        models["quadruple"] = {}
        python_node = {
            "name": "py",
            "inputs": ["image"],
            "nodes": [
                {
                    "name": "resize",
                    "type": "custom",
                    "library_name": "resize_py",
                    "params": {"target_height": "2", "target_width": "2"},
                    "inputs": [{"image": {"node_name": "request", "data_item": "image"}}],
                    "outputs": [{"data_item": "resized", "alias": "small"}],
                }
            ],
            "outputs": [{"small": {"node_name": "resize", "data_item": "small"}}],
        }
        write_config(
            config,
            models,
            [CHAIN, later, python_node],
            [{"name": "resize_py", "base_path": str(NODES / "resize_node.py")}],
        )
        report = reload(gw)
        assert client.is_model_ready("later") and client.is_model_ready("py"), report
        np.testing.assert_array_equal(infer(client, "later", x, "out"), x * 4)

        # a changed definition serves the next request; a removed one is gone
        changed = dict(CHAIN, nodes=[node("only", "triple", ("request", "x"), "t")])
        changed["outputs"] = [{"out": {"node_name": "only", "data_item": "t"}}]
        write_config(config, models, [changed])
        reload(gw)
        np.testing.assert_array_equal(infer(client, "chain", x, "out"), x * 3)
        for name in ("later", "py"):
            with pytest.raises(InferenceServerException) as e:
                client.get_model_metadata(name)
            assert e.value.status() == "StatusCode.NOT_FOUND"

        # a model a pipeline needs goes away: the pipeline is not ready, and says why
        del models["triple"]
        write_config(config, models, [changed])
        reload(gw)
        assert not client.is_model_ready("chain")
        with pytest.raises(InferenceServerException) as e:
            infer(client, "chain", x, "out")
        assert e.value.status() == "StatusCode.UNAVAILABLE" and "triple" in e.value.message()
    finally:
        client.close()
        gw.stop()


def test_requests_in_flight_finish_across_a_reload(repo):
    config = repo / "config.json"
    models = {"busy": {"nireq": 2}, "double": {}}
    slow = {
        "name": "slow",
        "inputs": ["x"],
        "nodes": [
            {
                "name": "work",
                "type": "DL model",
                "model_name": "busy",
                "inputs": [{"X": {"node_name": "request", "data_item": "x"}}],
                "outputs": [{"data_item": "Y", "alias": "y"}],
            },
            node("after", "double", ("work", "y")),
        ],
        "outputs": [{"out": {"node_name": "after", "data_item": "y"}}],
    }
    write_config(config, models, [slow])
    gw = start_test_gateway(
        ["--config_path", str(config), "--file_system_poll_wait_seconds", "0"], repo / "gw.log"
    )
    failures: list[str] = []
    answers: list[np.ndarray] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        x = np.full((4, 4), seed, np.float32)
        while not stop.is_set():
            try:
                out = infer(client, "slow", x, "out")
                answers.append(out)
                if not np.array_equal(out, x * 4):
                    failures.append(f"wrong answer {out[0]}")
            except Exception as e:  # any failure fails the test
                failures.append(str(e))
        client.close()

    try:
        with ThreadPoolExecutor(6) as pool:
            for seed in range(6):
                pool.submit(load, seed)
            # reload the models the pipeline uses (new settings: a blue/green model reload) and redefine
            # the pipeline itself, while its requests are in flight
            for round_ in range(3):
                models["busy"] = {"nireq": 1 + round_ % 2}
                models["double"] = {"nireq": 2 - round_ % 2}
                renamed = dict(slow, nodes=[dict(slow["nodes"][0], name=f"work{round_}"), slow["nodes"][1]])
                renamed["nodes"][1] = node("after", "double", (f"work{round_}", "y"))
                write_config(config, models, [renamed])
                reload(gw)
            stop.set()
    finally:
        stop.set()
        gw.stop()
    assert not failures, failures[:5]
    assert len(answers) >= 6
