"""Load-adaptive execution, end to end: a request that finds its model idle runs on the LATENCY-hint
execution, overlapping ones on the THROUGHPUT-hint streams; the flag and a user's own hint turn it off."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient

from gateway.demo_models import dummy_model, save
from loadgen.gateway_process import start_gateway
from tests.test_request_isolation import _scrape, _value


def _infer(url: str, n: int) -> None:
    client = grpcclient.InferenceServerClient(url)
    b = grpcclient.InferInput("b", [1, 10], "FP32")
    b.set_data_from_numpy(np.arange(10, dtype=np.float32).reshape(1, 10))
    for _ in range(n):
        np.testing.assert_array_equal(client.infer("dummy", [b]).as_numpy("a")[0], np.arange(10) + 1)
    client.close()


def _runs(gw, execution: str) -> float:
    return _value(_scrape(gw), "ovgw_executions", name="dummy", version="1", execution=execution)


def test_idle_requests_take_the_latency_execution_and_overlapping_ones_the_streams(gateway_server):
    gw = gateway_server
    (line,) = [line for line in gw.log().splitlines() if "model dummy version 1 ready" in line]
    assert "streams 2 + a LATENCY-hint execution" in line, line  # 2 cores: THROUGHPUT gives 2 streams
    latency, throughput = _runs(gw, "latency"), _runs(gw, "throughput")
    _infer(gw.grpc_url, 5)  # one client, one request at a time: the model is idle at each
    assert _runs(gw, "latency") - latency == 5 and _runs(gw, "throughput") == throughput
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: _infer(gw.grpc_url, 10), range(6)))
    assert _runs(gw, "throughput") > throughput  # overlapping requests went to the streams
    assert _runs(gw, "latency") + _runs(gw, "throughput") - latency - throughput == 5 + 60


def test_the_flag_and_a_configured_hint_keep_one_execution(tmp_path):
    save(dummy_model(), tmp_path / "dummy" / "1")
    save(dummy_model(), tmp_path / "hinted" / "1")
    config = tmp_path / "config.json"
    entries = [
        {"name": "dummy", "base_path": "dummy"},
        {"name": "hinted", "base_path": "hinted", "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT"}},
    ]
    config.write_text(json.dumps({"model_config_list": [{"config": e} for e in entries]}))
    for flag, expected in (("true", {"dummy"}), ("false", set())):
        gw = start_gateway(
            ["--config_path", str(config), "--adaptive_execution", flag], tmp_path / f"{flag}.log"
        )
        try:
            _infer(gw.grpc_url, 2)
            samples = _scrape(gw)["ovgw_executions"].samples
            assert {s.labels["name"] for s in samples} == expected, samples
        finally:
            gw.stop()
