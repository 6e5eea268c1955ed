"""Prometheus metrics at /metrics: OVMS's and Triton's families, with figures that match what was sent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from gateway.testing import free_port
from tests.support.servers import start_test_gateway


def scrape(gw) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def value(families, family, **labels):
    """One sample's value (the parser names counter samples `<family>_total`; the text does not)."""
    for sample in families[family].samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()) and sample.name in (
            family,
            family + "_count",
            family + "_total",
        ):
            return sample.value
    raise AssertionError(f"no {family} sample with {labels}")


@pytest.fixture(scope="module")
def metrics_server(model_repo, tmp_path_factory):
    gw = start_test_gateway(
        ["--config_path", str(model_repo / "config.json")], tmp_path_factory.mktemp("logs") / "m.log"
    )
    yield gw
    gw.stop()


def _dummy_input(module, rows):
    t = module.InferInput("b", [rows, 10], "FP32")
    t.set_data_from_numpy(np.zeros((rows, 10), np.float32))
    return t


def test_counters_and_histograms_match_what_was_sent(metrics_server):
    g = grpcclient.InferenceServerClient(metrics_server.grpc_url)
    h = httpclient.InferenceServerClient(metrics_server.http_url)
    started = time.perf_counter()
    for _ in range(5):
        g.infer("dummy", [_dummy_input(grpcclient, 2)])
    grpc_wall_us = (time.perf_counter() - started) * 1e6
    for _ in range(3):
        h.infer("dummy", [_dummy_input(httpclient, 1)])
    bad = httpclient.InferInput("b", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException):
        h.infer("dummy", [bad])
    g.get_model_metadata("dummy")
    g.get_model_metadata("dummy")
    assert h.is_model_ready("dummy")
    g.close()
    h.close()

    families, text = scrape(metrics_server)
    infer = {"api": "KServe", "method": "ModelInfer", "name": "dummy", "version": "1"}
    assert value(families, "ovms_requests_success", interface="gRPC", **infer) == 5
    assert value(families, "ovms_requests_success", interface="REST", **infer) == 3
    assert value(families, "ovms_requests_fail", interface="REST", **infer) == 1
    assert (
        value(families, "ovms_requests_success", interface="gRPC", method="ModelMetadata", name="dummy") == 2
    )
    assert value(families, "ovms_requests_success", interface="REST", method="ModelReady", name="dummy") == 1
    # counters keep OVMS's and Triton's bare names
    assert "# TYPE ovms_requests_success counter" in text and "ovms_requests_success_total" not in text
    assert "# TYPE nv_inference_count counter" in text

    assert value(families, "ovms_request_time_us", interface="gRPC", name="dummy", version="1") == 5
    assert value(families, "ovms_request_time_us", interface="REST", name="dummy", version="1") == 4
    assert value(families, "ovms_inference_time_us", name="dummy", version="1") == 8  # the bad one never ran
    assert value(families, "ovms_wait_for_infer_req_time_us", name="dummy", version="1") == 8
    # the server's request times fit inside what the client saw
    sums = {
        (s.labels["interface"], s.labels["name"]): s.value
        for s in families["ovms_request_time_us"].samples
        if s.name == "ovms_request_time_us_sum"
    }
    grpc_sum = sums[("gRPC", "dummy")]
    assert 0 < grpc_sum < grpc_wall_us
    bounds = [
        s.labels["le"] for s in families["ovms_request_time_us"].samples
        if s.name.endswith("_bucket") and s.labels["interface"] == "gRPC" and s.labels["name"] == "dummy"
    ]  # fmt: skip
    assert [float(b) for b in bounds] == [math.floor(10 * 1.8**i) for i in range(33)] + [math.inf]

    assert value(families, "ovms_streams", name="dummy", version="1") >= 1
    assert value(families, "ovms_current_requests", name="dummy", version="1") == 0
    assert value(families, "ovms_infer_req_queue_size", name="dummy", version="1") >= 1
    assert value(families, "ovms_infer_req_active", name="dummy", version="1") == 0

    assert value(families, "nv_inference_request_success", model="dummy", version="1") == 8
    assert value(families, "nv_inference_request_failure", model="dummy", version="1", reason="OTHER") == 1
    assert value(families, "nv_inference_exec_count", model="dummy", version="1") == 8
    assert value(families, "nv_inference_count", model="dummy", version="1") == 5 * 2 + 3 * 1
    assert value(families, "nv_inference_pending_request_count", model="dummy", version="1") == 0
    assert value(families, "nv_inference_compute_infer_duration_us", model="dummy", version="1") > 0

    # executions by batch size: 5 of batch 2 and 3 of batch 1
    batch = {
        float(s.labels["le"]): s.value
        for s in families["ovgw_batch_size"].samples
        if s.name == "ovgw_batch_size_bucket" and s.labels["name"] == "dummy"
    }
    assert batch[1] == 3 and batch[2] == 8 and batch[math.inf] == 8


def test_metrics_list_limits_the_families(model_repo, tmp_path):
    gw = start_test_gateway(
        ["--model_name", "dummy", "--model_path", str(model_repo / "dummy"),
         "--metrics_list", "ovms_streams,ovms_current_requests"],
        tmp_path / "gw.log",
    )  # fmt: skip
    try:
        families, _ = scrape(gw)
        assert set(families) == {"ovms_streams", "ovms_current_requests"}
    finally:
        gw.stop()


def test_metrics_can_be_disabled(model_repo, tmp_path):
    gw = start_test_gateway(
        ["--model_name", "dummy", "--model_path", str(model_repo / "dummy"), "--metrics_enable", "false"],
        tmp_path / "gw.log",
    )
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10)
        assert err.value.code == 404
    finally:
        gw.stop()


def test_unknown_metric_name_is_a_startup_error(model_repo):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--model_name", "dummy", "--model_path", str(model_repo / "dummy"),
         "--metrics_list", "ovms_streams,ovms_bogus"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "ovms_bogus" in result.stderr


# --- a real Prometheus server scrapes the gateway -------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / ".cache" / "prometheus"


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    binary = Path(os.environ.get("PROMETHEUS", PROMETHEUS_DIR / "usr" / "bin" / "prometheus"))
    if not binary.exists():
        result = subprocess.run(
            ["make", "--no-print-directory", "prometheus"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0 or not binary.exists():
            reason = (result.stdout + result.stderr)[-600:]
            pytest.skip(f"Debian's prometheus package could not be installed: {reason}")
    return binary


def _query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_ovms_autoscaling_ratio(metrics_server, prometheus_binary, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ovgw\n"
        f"    static_configs:\n      - targets: ['{metrics_server.http_url}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the process owns it
    server = subprocess.Popen(
        [str(prometheus_binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(metrics_server.http_url)
        t = httpclient.InferInput("INPUT0", [1, 3], "FP32")
        t.set_data_from_numpy(np.ones((1, 3), np.float32))
        for _ in range(7):
            client.infer("identity_fp32", [t])
        client.close()
        count_query = 'sum(ovms_requests_success{name="identity_fp32",method="ModelInfer"})'
        deadline = time.monotonic() + 60
        counted = None
        while time.monotonic() < deadline:
            try:
                result = _query(port, count_query)
                counted = float(result[0]["value"][1]) if result else None
            except (urllib.error.URLError, ConnectionError):
                counted = None
            if counted == 7:
                break
            time.sleep(0.5)
        assert counted == 7, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(_query(port, 'up{job="ovgw"}')[0]["value"][1]) == 1
        # the OVMS autoscaling recipe's ratio, per model version
        ratio = _query(
            port, 'ovms_current_requests{name="identity_fp32"} / ovms_streams{name="identity_fp32"}'
        )
        assert len(ratio) == 1 and ratio[0]["metric"]["version"] == "1"
        assert float(ratio[0]["value"][1]) == 0.0  # no request in flight now; streams > 0 so it is defined
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_metrics_port_and_json_logs(model_repo, tmp_path):
    port = free_port()
    log = tmp_path / "gw.json.log"
    gw = start_test_gateway(
        ["--model_name", "dummy", "--model_path", str(model_repo / "dummy"), "--metrics_port", str(port),
         "--log_format", "json", "--log_path", str(log)],
        tmp_path / "stdout.log",
    )  # fmt: skip
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert "ovms_streams{" in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:  # that port serves /metrics alone
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
        assert err.value.code == 404
    finally:
        assert gw.stop() == 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("dummy version 1 ready on CPU" in e["message"] for e in entries)


def _start_prometheus(binary: Path, target: str, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: ovgw\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the process owns it
    server = subprocess.Popen(
        [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return server, port


def _eventually(port: int, promql: str, wanted, timeout: float = 60.0):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            result = _query(port, promql)
            last = float(result[0]["value"][1]) if result else None
        except (urllib.error.URLError, ConnectionError):
            last = None
        if last is not None and wanted(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{promql} = {last}")


def test_prometheus_sees_load_and_rejections_under_overload(prometheus_binary, tmp_path):
    """Under a load that fills the queue: the OVMS autoscaling ratio goes above 0 in Prometheus, and the
    rejected requests Prometheus counts are those the clients were refused."""
    import asyncio

    import tritonclient.grpc.aio as grpcaio

    from gateway.demo_models import save
    from tests.support.model_builders import busy_model

    save(busy_model(60, width=512), tmp_path / "slow" / "1")
    args = ["--model_name", "slow", "--model_path", str(tmp_path / "slow"), "--nireq", "1",
            "--max_queue_size", "2"]  # fmt: skip
    gw = start_test_gateway(args, tmp_path / "gw.log")
    server, port = _start_prometheus(prometheus_binary, gw.http_url, tmp_path)

    async def load(seconds: float) -> tuple[int, int]:
        client = grpcaio.InferenceServerClient(gw.grpc_url)
        x = grpcaio.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        ok = refused = 0
        stop = time.monotonic() + seconds

        async def loop():
            nonlocal ok, refused
            while time.monotonic() < stop:
                try:
                    await client.infer("slow", [x])
                    ok += 1
                except InferenceServerException as e:
                    assert e.status() == "StatusCode.RESOURCE_EXHAUSTED", e
                    refused += 1
                    await asyncio.sleep(0.01)

        try:
            await asyncio.gather(*(loop() for _ in range(6)))
        finally:
            await client.close()
        return ok, refused

    try:
        _eventually(port, 'up{job="ovgw"}', lambda v: v == 1)
        ok, refused = asyncio.run(load(4.0))
        assert ok and refused
        ratio = 'max_over_time((ovms_current_requests{name="slow"} / ovms_streams{name="slow"})[1m:500ms])'
        assert _eventually(port, ratio, lambda v: v > 0) > 0
        _eventually(port, 'ovgw_requests_rejected{name="slow"}', lambda v: v == refused)
        _eventually(
            port, 'nv_inference_request_failure{model="slow",reason="REJECTED"}', lambda v: v == refused
        )
        _eventually(port, 'nv_inference_request_success{model="slow"}', lambda v: v == ok)
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert gw.stop() == 0
