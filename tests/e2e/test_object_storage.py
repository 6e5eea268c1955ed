"""Model repositories in object storage, served from real servers on loopback (S3 on moto's server, Azure
Blob on Azurite), as OVMS reads them: URLs and credentials from the environment, versions as numeric
folders, new versions rolled out by the poll, errors that name their cause, and a download cache that a
restart reuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.demo_models import save, scaled_model
from gateway.testing import free_port
from tests.support.object_stores import KINDS, StoreUnderTest, start_store
from tests.support.servers import start_test_gateway


def _stocked_store(kind: str, tmp_path_factory) -> StoreUnderTest:
    """A store holding versions 1 and 2 of `scaled` (x * its version number); version 3 is kept aside."""
    server = start_store(kind)
    server.create_container()
    local = tmp_path_factory.mktemp(f"versions-{kind}")
    for version in (1, 2, 3):
        save(scaled_model(float(version)), local / str(version))
    server.upload_folder(local / "1", "scaled/1")
    server.upload_folder(local / "2", "scaled/2")
    server.local_versions = local  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module", params=KINDS)
def store(request, tmp_path_factory):
    server = _stocked_store(request.param, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gcs_store(tmp_path_factory):
    server = _stocked_store("gcs", tmp_path_factory)
    yield server
    server.stop()


def _answer(url: str, model: str = "scaled") -> float:
    client = httpclient.InferenceServerClient(url)
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    return float(client.infer(model, [x]).as_numpy("y")[0, 0])


def _wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def _served(store: StoreUnderTest, tmp_path: Path, extra: tuple | list = ()):
    return start_test_gateway(
        ["--model_name", "scaled", "--model_path", store.url("scaled"),
         "--model_cache_dir", str(tmp_path / "cache"), "--file_system_poll_wait_seconds", "0.2", *extra],
        tmp_path / "gw.log", env=store.environ(),
    )  # fmt: skip


def test_the_latest_version_in_the_store_serves(store, tmp_path):
    gw = _served(store, tmp_path)
    try:
        assert _answer(gw.http_url) == 2.0
        meta = grpcclient.InferenceServerClient(gw.grpc_url).get_model_metadata("scaled")
        assert list(meta.versions) == ["2"]
    finally:
        assert gw.stop() == 0


def test_a_new_version_rolls_out_under_traffic_and_a_deleted_one_rolls_back(store, tmp_path):
    gw = _served(store, tmp_path)
    failures: list[Exception] = []
    answers: set[float] = set()
    stop = threading.Event()

    def traffic() -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        while not stop.is_set():
            try:
                answers.add(float(client.infer("scaled", [x]).as_numpy("y")[0, 0]))
            except InferenceServerException as e:
                failures.append(e)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        store.upload_folder(store.local_versions / "3", "scaled/3")
        _wait_for(lambda: 3.0 in answers)
        assert list((tmp_path / "cache").glob("*/3-*")), "version 3 was downloaded into the cache"
        store.delete_prefix("scaled/3/")
        _wait_for(lambda: _answer(gw.http_url) == 2.0)
        # The retired version's download goes with it; the serving one stays.
        _wait_for(lambda: not list((tmp_path / "cache").glob("*/3-*")))
        assert list((tmp_path / "cache").glob("*/2-*"))
    finally:
        stop.set()
        thread.join()
        gw.stop()
    assert not failures, failures[:3]
    assert answers >= {2.0, 3.0}


def test_a_restart_downloads_nothing_it_already_has_and_imports_the_compiled_blob(store, tmp_path):
    blobs = ["--cache_dir", str(tmp_path / "blobs")]
    gw = _served(store, tmp_path, blobs)
    gw.stop()
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert before, "the first start downloaded the version into the cache"
    gw = _served(store, tmp_path, blobs)
    try:
        assert _answer(gw.http_url) == 2.0
        after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
        assert after == before, "a file was downloaded again"
        assert "model scaled version 2 ready" in gw.log() and "imported from the cache" in gw.log()
    finally:
        gw.stop()


@pytest.mark.parametrize(
    "case", ["refused credentials", "missing container", "unreachable endpoint", "missing path"]
)
def test_model_path_that_cannot_be_listed_ends_the_process_naming_the_cause(store, tmp_path, case):
    url, env, cause = store.url("scaled"), store.environ(), ""
    if case == "refused credentials":
        env, cause = store.refused_credentials_environ(), "the credentials were refused"
    elif case == "missing container":
        url, cause = store.url("scaled", container="no-such-container"), store.missing_container_cause
    elif case == "unreachable endpoint":
        (url, env), cause = store.unreachable("scaled"), "the endpoint cannot be reached"
    elif case == "missing path":
        url, cause = store.url("no/such/model"), "no version folders"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--model_name", "scaled", "--model_path", url,
         "--port", str(free_port()), "--rest_port", str(free_port()), "--grpc_bind_address", "127.0.0.1",
         "--rest_bind_address", "127.0.0.1", "--model_cache_dir", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert url in result.stderr and cause in result.stderr, result.stderr[-2000:]


def test_with_config_json_a_model_that_cannot_be_listed_is_not_ready_and_the_others_serve(store, tmp_path):
    models = [
        {"config": {"name": "scaled", "base_path": store.url("scaled")}},
        {"config": {"name": "lost", "base_path": store.url("m", container="no-such-container")}},
    ]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": models}))
    gw = start_test_gateway(
        ["--config_path", str(config), "--model_cache_dir", str(tmp_path / "cache")],
        tmp_path / "gw.log", env=store.environ(),
    )  # fmt: skip
    try:
        assert _answer(gw.http_url) == 2.0
        client = httpclient.InferenceServerClient(gw.http_url)
        assert not client.is_model_ready("lost")
        with pytest.raises(InferenceServerException, match=store.missing_container_cause):
            client.get_model_metadata("lost")
    finally:
        gw.stop()


def test_a_pipeline_of_models_from_the_store(store, tmp_path):
    def node(name: str, source: tuple[str, str]) -> dict:
        return {"name": name, "type": "DL model", "model_name": "scaled",
                "inputs": [{"x": {"node_name": source[0], "data_item": source[1]}}],
                "outputs": [{"data_item": "y", "alias": "y"}]}  # fmt: skip

    pipeline = {
        "name": "scaled_twice",
        "inputs": ["x"],
        "nodes": [node("first", ("request", "x")), node("second", ("first", "y"))],
        "outputs": [{"y": {"node_name": "second", "data_item": "y"}}],
    }
    model = {"config": {"name": "scaled", "base_path": store.url("scaled")}}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [model], "pipeline_config_list": [pipeline]}))
    gw = start_test_gateway(
        ["--config_path", str(config), "--model_cache_dir", str(tmp_path / "cache")],
        tmp_path / "gw.log", env=store.environ(),
    )  # fmt: skip
    try:
        assert _answer(gw.http_url, "scaled_twice") == 4.0  # x * 2 * 2
    finally:
        gw.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_the_store_going_away_leaves_the_loaded_versions_serving(kind, tmp_path):
    server = start_store(kind)
    try:
        server.create_container()
        save(scaled_model(1.0), tmp_path / "v1")
        server.upload_folder(tmp_path / "v1", "scaled/1")
        gw = _served(server, tmp_path)
    finally:
        server.stop()
    try:
        time.sleep(1.0)  # several polls find the store gone
        assert _answer(gw.http_url) == 1.0
        log = gw.log()
        assert len(re.findall(r"its repository cannot be listed", log)) == 1, log[-3000:]
    finally:
        gw.stop()


def _big_model(rows: int):
    """y = x + W[0] with W FP32 [rows, 4] of random values (W[0] = 0.5): a weights file of many download
    parts."""
    import openvino as ov
    from openvino import opset13 as ops

    weights = np.random.default_rng(0).random((rows, 4), dtype=np.float32)
    weights[0] = 0.5
    x = ops.parameter([-1, 4], ov.Type.f32, name="x")
    x.output(0).get_tensor().set_names({"x"})
    row = ops.gather(ops.constant(weights), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0)))
    y = ops.add(x, row)
    y.output(0).get_tensor().set_names({"y"})
    return ov.Model([y.output(0)], [x], "big")


def _metric(url: str, family: str, model: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    found = re.search(rf'^{family}{{name="{model}",version="1"}} (\S+)$', text, re.M)
    assert found, f"{family} for {model} missing from /metrics"
    return float(found.group(1))


def test_large_weights_arrive_in_parts_and_the_download_is_measured(store, tmp_path):
    save(_big_model(1_000_000), tmp_path / "big" / "1")  # 16 MB of weights: several 8 MiB parts
    store.upload_folder(tmp_path / "big" / "1", "big/1")
    size = sum(p.stat().st_size for p in (tmp_path / "big" / "1").rglob("*") if p.is_file())
    args = [
        "--model_name",
        "big",
        "--model_path",
        store.url("big"),
        "--model_cache_dir",
        str(tmp_path / "cache"),
    ]
    gw = start_test_gateway(args, tmp_path / "gw.log", env=store.environ())
    try:
        assert _answer(gw.http_url, "big") == 1.5
        assert _metric(gw.http_url, "ovgw_model_download_bytes", "big") == size
        assert _metric(gw.http_url, "ovgw_model_download_seconds", "big") > 0
        assert re.search(r"model big version 1: downloaded [\d.]+ MB in [\d.]+ s", gw.log())
    finally:
        gw.stop()
    gw = start_test_gateway(args, tmp_path / "gw2.log", env=store.environ())
    try:  # the restart finds the version in the model cache
        assert _metric(gw.http_url, "ovgw_model_download_bytes", "big") == 0
    finally:
        gw.stop()


def test_gcs_credentials_from_a_service_account_file(gcs_store, tmp_path):
    store = gcs_store
    env = store.service_account_environ()
    gw = start_test_gateway(
        ["--model_name", "scaled", "--model_path", store.url("scaled"),
         "--model_cache_dir", str(tmp_path / "c")],
        tmp_path / "gw.log", env=env,
    )  # fmt: skip
    try:
        assert _answer(gw.http_url) == 2.0
        assert store.token_server.grants, "the gateway asked the token endpoint for a token"
    finally:
        gw.stop()


def test_the_operator_recipe_config_map_serves_from_a_public_gcs_bucket(gcs_store, tmp_path):
    """OVMS's Kubernetes recipe: config.json naming gs://ovms-public-eu/resnet50-binary, no credentials."""
    store = gcs_store
    store.server.create_bucket("ovms-public-eu")
    for path in sorted((store.local_versions / "1").rglob("*")):
        store.server.upload("ovms-public-eu", f"resnet50-binary/1/{path.name}", path.read_bytes())
    config = tmp_path / "config.json"
    entry = {"name": "resnet", "base_path": "gs://ovms-public-eu/resnet50-binary", "target_device": "CPU",
             "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT"}}  # fmt: skip
    config.write_text(json.dumps({"model_config_list": [{"config": entry}]}))
    env = store.environ()
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
    gw = start_test_gateway(
        ["--config_path", str(config), "--model_cache_dir", str(tmp_path / "cache")],
        tmp_path / "gw.log",
        env=env,
    )
    try:
        assert _answer(gw.http_url, "resnet") == 1.0
    finally:
        gw.stop()


def test_a_version_that_fails_to_load_is_retried_with_backoff_and_at_once_when_fixed(tmp_path):
    server = start_store("s3")
    try:
        server.create_container()
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model.xml").write_text("<net>not a model</net>")
        server.upload_folder(broken, "flaky/1")
        models = [{"config": {"name": "flaky", "base_path": server.url("flaky")}}]
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"model_config_list": models}))
        gw = start_test_gateway(
            ["--config_path", str(config), "--model_cache_dir", str(tmp_path / "cache"),
             "--file_system_poll_wait_seconds", "0.2"],
            tmp_path / "gw.log", env=server.environ(),
        )  # fmt: skip
        try:
            time.sleep(8.0)  # 40 polls; with the backoff (1, 2, 4 s) 4 tries, the next one 8 s later
            tries = len(re.findall(r"model flaky version 1: failed to load", gw.log()))
            assert 3 <= tries <= 5, gw.log()[-3000:]
            assert len(re.findall(r"model flaky version 1: downloading", gw.log())) == 1, "downloaded once"
            save(scaled_model(1.0), tmp_path / "fixed")
            server.delete_prefix("flaky/1/")
            server.upload_folder(tmp_path / "fixed", "flaky/1")
            started = time.monotonic()
            _wait_for(lambda: httpclient.InferenceServerClient(gw.http_url).is_model_ready("flaky"), 30)
            # New files are tried at the next poll, not when the backoff ends
            assert time.monotonic() - started < 5.0
        finally:
            gw.stop()
    finally:
        server.stop()
