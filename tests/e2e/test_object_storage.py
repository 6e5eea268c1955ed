"""Model repositories in S3, served from a real S3 server on loopback (moto's), as OVMS reads them:
`s3://host:port/bucket/path` and the AWS_* variables, versions as numeric folders, new versions rolled out
by the poll, errors that name their cause, and a download cache that a restart reuses."""

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
from tests.support.s3 import S3Server, start_s3_server
from tests.support.servers import start_test_gateway

BUCKET = "models"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server()
    server.client().create_bucket(Bucket=BUCKET)
    local = tmp_path_factory.mktemp("versions")
    for version in (1, 2, 3):  # `scaled` answers x * its version number
        save(scaled_model(float(version)), local / str(version))
    server.upload_folder(local / "1", BUCKET, "scaled/1")
    server.upload_folder(local / "2", BUCKET, "scaled/2")
    server.local_versions = local  # type: ignore[attr-defined]
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


def _served(s3: S3Server, tmp_path: Path, env: dict | None = None, **kw):
    return start_test_gateway(
        ["--model_name", "scaled", "--model_path", f"s3://127.0.0.1:{s3.port}/{BUCKET}/scaled",
         "--model_cache_dir", str(tmp_path / "cache"), "--file_system_poll_wait_seconds", "0.2"],
        tmp_path / "gw.log", env=env or s3.environ(), **kw,
    )  # fmt: skip


def test_the_latest_version_in_the_bucket_serves(s3, tmp_path):
    gw = _served(s3, tmp_path)
    try:
        assert _answer(gw.http_url) == 2.0
        meta = grpcclient.InferenceServerClient(gw.grpc_url).get_model_metadata("scaled")
        assert list(meta.versions) == ["2"]
    finally:
        assert gw.stop() == 0


def test_a_new_version_rolls_out_under_traffic_and_a_deleted_one_rolls_back(s3, tmp_path):
    gw = _served(s3, tmp_path)
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
        s3.upload_folder(s3.local_versions / "3", BUCKET, "scaled/3")
        _wait_for(lambda: 3.0 in answers)
        s3.delete_prefix(BUCKET, "scaled/3/")
        _wait_for(lambda: _answer(gw.http_url) == 2.0)
    finally:
        stop.set()
        thread.join()
        gw.stop()
    assert not failures, failures[:3]
    assert answers >= {2.0, 3.0}


def test_a_restart_downloads_nothing_it_already_has(s3, tmp_path):
    gw = _served(s3, tmp_path)
    gw.stop()
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert before, "the first start downloaded the version into the cache"
    gw = _served(s3, tmp_path)
    try:
        assert _answer(gw.http_url) == 2.0
        after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
        assert after == before, "a file was downloaded again"
    finally:
        gw.stop()


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("bad credentials", "the credentials were refused"),
        ("missing bucket", "the bucket does not exist"),
        ("unreachable endpoint", "the endpoint cannot be reached"),
        ("missing path", "no version folders"),
    ],
)
def test_model_path_that_cannot_be_listed_ends_the_process_naming_the_cause(s3, tmp_path, case, cause):
    url, env = f"s3://127.0.0.1:{s3.port}/{BUCKET}/scaled", s3.environ()
    if case == "bad credentials":
        env = s3.environ(AWS_SECRET_ACCESS_KEY="wrong")
    elif case == "missing bucket":
        url = f"s3://127.0.0.1:{s3.port}/no-such-bucket/scaled"
    elif case == "unreachable endpoint":
        url = "s3://127.0.0.1:9/models/scaled"
    elif case == "missing path":
        url = f"s3://127.0.0.1:{s3.port}/{BUCKET}/no/such/model"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--model_name", "scaled", "--model_path", url,
         "--port", str(free_port()), "--rest_port", str(free_port()), "--grpc_bind_address", "127.0.0.1",
         "--rest_bind_address", "127.0.0.1", "--model_cache_dir", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert url in result.stderr and cause in result.stderr, result.stderr[-2000:]


def test_with_config_json_a_model_that_cannot_be_listed_is_not_ready_and_the_others_serve(s3, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        '{"model_config_list": ['
        f'{{"config": {{"name": "scaled", "base_path": "s3://127.0.0.1:{s3.port}/{BUCKET}/scaled"}}}},'
        f'{{"config": {{"name": "lost", "base_path": "s3://127.0.0.1:{s3.port}/no-such-bucket/m"}}}}]}}'
    )
    gw = start_test_gateway(
        ["--config_path", str(config), "--model_cache_dir", str(tmp_path / "cache")],
        tmp_path / "gw.log", env=s3.environ(),
    )  # fmt: skip
    try:
        assert _answer(gw.http_url) == 2.0
        client = httpclient.InferenceServerClient(gw.http_url)
        assert not client.is_model_ready("lost")
        with pytest.raises(InferenceServerException, match="the bucket does not exist"):
            client.get_model_metadata("lost")
    finally:
        gw.stop()


def test_a_pipeline_of_models_from_a_bucket(s3, tmp_path):
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
    model = {"config": {"name": "scaled", "base_path": f"s3://127.0.0.1:{s3.port}/{BUCKET}/scaled"}}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [model], "pipeline_config_list": [pipeline]}))
    gw = start_test_gateway(
        ["--config_path", str(config), "--model_cache_dir", str(tmp_path / "cache")],
        tmp_path / "gw.log", env=s3.environ(),
    )  # fmt: skip
    try:
        assert _answer(gw.http_url, "scaled_twice") == 4.0  # x * 2 * 2
    finally:
        gw.stop()


def test_the_store_going_away_leaves_the_loaded_versions_serving(tmp_path):
    server = start_s3_server()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        save(scaled_model(1.0), tmp_path / "v1")
        server.upload_folder(tmp_path / "v1", BUCKET, "scaled/1")
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
