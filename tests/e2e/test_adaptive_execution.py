"""Load-adaptive execution, end to end: a request that finds its model idle runs on the execution measured
best for lone requests (the LATENCY-hint one for a compute-bound model, the THROUGHPUT-hint one for a tiny
model), overlapping ones on the THROUGHPUT-hint streams; the flag and a user's own hint keep one execution."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.demo_models import dummy_model, save
from gateway.scheduling.adaptive import INLINE_CANDIDATE_S, latency_execution_pays
from gateway.testing import start_gateway
from tests.support.metrics import scrape as _scrape
from tests.support.metrics import value as _value
from tests.support.model_builders import busy_model


@pytest.fixture(scope="module")
def adaptive_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    save(busy_model(16, width=512), root / "heavy" / "1")  # tens of ms alone: more cores pay
    save(dummy_model(), root / "dummy" / "1")  # microseconds: they do not
    entries = [{"name": "heavy", "base_path": "heavy"}, {"name": "dummy", "base_path": "dummy"}]
    (root / "config.json").write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    gw = start_gateway(["--config_path", str(root / "config.json")], root / "gw.log")
    yield gw
    gw.stop()


def _infer_heavy(url: str, n: int) -> None:
    client = grpcclient.InferenceServerClient(url)
    x = grpcclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    for _ in range(n):
        np.testing.assert_array_equal(client.infer("heavy", [x]).as_numpy("Y")[0], np.arange(4) * 2)
    client.close()


def _infer_dummy(url: str, n: int) -> None:
    client = grpcclient.InferenceServerClient(url)
    b = grpcclient.InferInput("b", [1, 10], "FP32")
    b.set_data_from_numpy(np.zeros((1, 10), np.float32))
    for _ in range(n):
        np.testing.assert_array_equal(client.infer("dummy", [b]).as_numpy("a"), np.ones((1, 10), np.float32))
    client.close()


def _runs(gw, model: str, execution: str) -> float:
    return _value(_scrape(gw), "ovgw_executions", name=model, version="1", execution=execution)


def _load_line(gw, model: str) -> str:
    (line,) = [line for line in gw.log().splitlines() if f"model {model} version 1 ready" in line]
    return line


def _lone_seconds(gw, model: str, execution: str) -> float:
    return _value(_scrape(gw), "ovgw_lone_inference_seconds", name=model, version="1", execution=execution)


def test_idle_requests_take_the_latency_execution_and_overlapping_ones_the_streams(adaptive_server):
    gw = adaptive_server
    assert "streams 2 + a LATENCY-hint execution for lone requests" in _load_line(gw, "heavy")
    _infer_heavy(gw.grpc_url, 4)  # one client, one request at a time: the model is idle at each
    # Two runs on each execution warm and measure it, in this order whatever the timings: L, L, T, T.
    assert _runs(gw, "heavy", "latency") == 2 and _runs(gw, "heavy", "throughput") == 2
    for _ in range(4):
        # Each lone request then runs where the measured lone times (exposed as metrics) point. Which one
        # that is depends on the machine's timings, a benchmark's business (docs/benchmarking.md); the
        # wiring does not.
        latency_s, throughput_s = (_lone_seconds(gw, "heavy", e) for e in ("latency", "throughput"))
        favoured = "latency" if latency_execution_pays(throughput_s, latency_s) else "throughput"
        before = _runs(gw, "heavy", favoured)
        _infer_heavy(gw.grpc_url, 1)
        assert _runs(gw, "heavy", favoured) == before + 1, (favoured, latency_s, throughput_s)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: _infer_heavy(gw.grpc_url, 5), range(4)))
    assert _runs(gw, "heavy", "throughput") > 0  # overlapping requests went to the streams
    assert _runs(gw, "heavy", "latency") + _runs(gw, "heavy", "throughput") == 8 + 20


def test_a_tiny_model_s_lone_requests_follow_its_measured_times_too(adaptive_server):
    gw = adaptive_server
    _infer_dummy(gw.grpc_url, 4)
    assert _runs(gw, "dummy", "latency") == 2 and _runs(gw, "dummy", "throughput") == 2
    # Microseconds either way (which of the two is quicker, from one sample each, is the machine's
    # business: test_scheduler_unit checks the rule on given times).
    latency_s = _lone_seconds(gw, "dummy", "latency")
    # Quick enough (its hand-over included) to run on the event loop: the one-thread execution is built
    # in the background, and lone requests then run inline, with the right answers.
    if latency_s <= INLINE_CANDIDATE_S:
        deadline = time.monotonic() + 30
        while _runs(gw, "dummy", "inline") < 10 and time.monotonic() < deadline:
            _infer_dummy(gw.grpc_url, 5)
        assert _runs(gw, "dummy", "inline") >= 10, gw.log()[-3000:]
        assert "model dummy version 1: lone requests run inline" in gw.log()
    else:  # a slow machine: the threaded executions keep them (a later probe may still find it quick)
        _infer_dummy(gw.grpc_url, 20)
    assert _runs(gw, "heavy", "inline") == 0  # tens of milliseconds: never on the loop


def test_the_flag_and_a_configured_hint_keep_one_execution(tmp_path):
    save(busy_model(16, width=512), tmp_path / "heavy" / "1")
    entries = [
        {"name": "heavy", "base_path": "heavy"},
        {"name": "hinted", "base_path": "heavy", "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT"}},
    ]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    for flag, expected in (("true", {"heavy"}), ("false", set())):
        gw = start_gateway(
            ["--config_path", str(config), "--adaptive_execution", flag], tmp_path / f"{flag}.log"
        )
        try:
            _infer_heavy(gw.grpc_url, 1)
            samples = _scrape(gw)["ovgw_executions"].samples
            assert {s.labels["name"] for s in samples} == expected, samples
        finally:
            gw.stop()
