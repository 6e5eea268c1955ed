"""Graceful shutdown: on SIGTERM every accepted request is answered, new ones are refused, exit 0."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.demo_models import save
from loadgen.bench.models import resnet50_shaped
from tests.support.servers import start_test_gateway


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A compute-bound model (~20 ms per image here), so requests are in flight when the signal comes."""
    root = tmp_path_factory.mktemp("slow")
    save(resnet50_shaped(), root / "resnet" / "1")
    return root / "resnet"


def test_sigterm_drains_in_flight_requests_and_exits_zero(slow_model, tmp_path):
    args = ["--model_name", "resnet", "--model_path", str(slow_model), "--shutdown_timeout", "30"]
    gw = start_test_gateway(args, tmp_path / "gw.log")
    outcomes: list[tuple[str, float, float, str]] = []  # (kind, sent, done, detail)
    lock = threading.Lock()
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)

    def client_loop():
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        tensor = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(image)
        refusals = 0
        while refusals < 2:  # keep sending until the server has refused twice
            sent = time.monotonic()
            try:
                client.infer("resnet", [tensor], client_timeout=60)
                kind, detail = "ok", ""
            except InferenceServerException as e:
                refused = e.status() == "StatusCode.UNAVAILABLE"
                kind, detail = ("refused" if refused else "lost"), e.message()
            with lock:
                outcomes.append((kind, sent, time.monotonic(), detail))
            refusals += kind != "ok"
        client.close()

    signal_time = [0.0]
    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    signal_time[0] = time.monotonic()
    gw.process.terminate()  # SIGTERM
    for t in threads:
        t.join(timeout=90)
    code = gw.process.wait(timeout=60)
    log = gw.log()

    assert code == 0, log[-2000:]
    lost = [o for o in outcomes if o[0] == "lost"]
    assert not lost, lost[:3]  # an accepted request never goes unanswered
    ok_before = [o for o in outcomes if o[0] == "ok" and o[2] < signal_time[0]]
    finished_after_signal = [o for o in outcomes if o[0] == "ok" and o[1] < signal_time[0] < o[2]]
    assert ok_before and finished_after_signal, "requests in flight at SIGTERM must still be answered"
    assert any(o[0] == "refused" for o in outcomes)  # and new ones are refused
    assert "draining" in log and "stopped" in log
