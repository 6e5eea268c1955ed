"""The load process's window (loadgen/worker.py) with a fake client in place of tritonclient."""

from __future__ import annotations

import asyncio
import time

from loadgen import worker

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
        start_at=time.time() + 0.5, window_s=1.05, warmup_s=0.5,
    )  # fmt: skip
    result = asyncio.run(worker._run(job))
    # Each client sends at -0.5, -0.2, 0.1, 0.4, 0.7 s from the window's start; the answers at 0.1, 0.4,
    # 0.7 and 1.0 s end inside it, the first of them sent during the warm-up. Counting only requests sent
    # inside the window would find 3 per client: throughput one latency's worth of the window low.
    assert len(result.latencies_ns) == 4 * concurrency
    assert all(abs(ns / 1e9 - LATENCY_S) < 0.1 for ns in result.latencies_ns)
    assert result.errors == 0
