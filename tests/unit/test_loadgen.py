"""The load process's window (loadgen/worker.py) with a fake client in place of tritonclient; the overload
ceilings (loadgen/bench/refusal_cost.py) from given costs."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadgen import worker
from loadgen.bench import refusal_cost

LATENCY_S = 0.3


class _SlowClient:
    """Answers every request after LATENCY_S."""

    async def infer(self, model, inputs, model_version=""):
        await asyncio.sleep(LATENCY_S)

    async def close(self):
        pass


def test_a_window_counts_every_request_that_ends_inside_it_as_perf_analyzer_does(monkeypatch):
    monkeypatch.setattr(worker, "_client", lambda job: (_SlowClient(), []))
    concurrency = 4
    job = worker.WorkerJob(
        url="", protocol="grpc", model="m", version="", inputs=[], concurrency=concurrency,
        start_at=time.time() + 0.5, window_s=1.15, warmup_s=0.5,
    )  # fmt: skip
    result = asyncio.run(worker._run(job))
    # Each client sends at -0.5, -0.2, 0.1, 0.4, 0.7 s from the window's start; the answers at 0.1, 0.4,
    # 0.7 and 1.0 s end inside it, the first of them sent during the warm-up. Counting only requests sent
    # inside the window would find 3 per client: throughput one latency's worth of the window low. (The
    # window ends half a latency past the last answer, so a loaded machine's late timers do not move an
    # answer across it.)
    assert len(result.latencies_ns) == 4 * concurrency
    assert all(abs(ns / 1e9 - LATENCY_S) < 0.15 for ns in result.latencies_ns)
    assert result.errors == 0


def test_the_admitted_ceiling_charges_every_refusal_its_measured_cost():
    # served calls cost 400 us and refusals 100: at 2 x capacity offered, the CPU of one capacity's worth of
    # served calls is shared as X * 400 + (2 - X) * 100 = 400, X = 2/3
    assert refusal_cost.admitted_ceiling(400, 100, 2) == pytest.approx(2 / 3)
    assert refusal_cost.admitted_ceiling(400, 100, 1) == 1.0  # nothing to refuse
    assert refusal_cost.admitted_ceiling(400, 100, 10) == 0.0  # refusing 10 x costs more than serving 1 x
    # 5 % of 1,000 calls/s x 400 us = 20 ms of CPU a second: 200 refusals at 100 us
    assert refusal_cost.refusals_per_second_allowed(1000, 400, 100) == pytest.approx(200)


def test_a_refusal_request_names_a_model_no_server_serves_and_carries_the_payload():
    from gateway.proto import ovgw_grpc_service_pb2 as pb

    request = pb.ModelInferRequest.FromString(refusal_cost.request_bytes(1000))
    assert request.model_name == refusal_cost.UNSERVED_MODEL
    assert [len(raw) for raw in request.raw_input_contents] == [1000]
    assert list(request.inputs[0].shape) == [1, 1000] and request.inputs[0].datatype == "UINT8"
