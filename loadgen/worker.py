"""One load process: asyncio tritonclient clients in closed loop (concurrency) or open loop (rate)."""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field

import numpy as np

from gateway.malloc_tuning import tune_malloc

REQUEST_TIMEOUT_S = 60.0


@dataclass
class WorkerJob:
    url: str
    protocol: str
    model: str
    version: str
    inputs: list  # TensorData
    concurrency: int = 0  # closed loop: this many requests always in flight
    rate: float = 0.0  # open loop: requests per second from this process
    distribution: str = "constant"
    start_at: float = 0.0  # time.time() at which the measurement window opens
    window_s: float = 5.0
    warmup_s: float = 1.0
    seed: int = 0


@dataclass
class WorkerResult:
    latencies_ns: list[int] = field(default_factory=list)
    error_latencies_ns: list[int] = field(default_factory=list)  # how long a refusal or failure took
    errors: int = 0
    first_error: str = ""
    cpu_s: float = 0.0
    late_sends: int = 0  # open loop: sends that could not leave on time


def run_worker(job: WorkerJob) -> WorkerResult:
    # The loader shares the machine with the server: glibc's defaults would make it fault fresh pages in
    # for every large response it receives (gateway/malloc_tuning.py), CPU the server then lacks. Measured
    # on the segmentation model (5.5 MB out): loader CPU 104 -> 70-91 % of a core, gateway throughput
    # 1.15-1.36 x, its CPU per request unchanged. The KServe peer and the floor get the same loader.
    tune_malloc()
    try:
        import uvloop

        return uvloop.run(_run(job))
    except ImportError:  # pragma: no cover
        return asyncio.run(_run(job))


def _client(job: WorkerJob):
    if job.protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    client = module.InferenceServerClient(job.url)
    inputs = []
    for t in job.inputs:
        tensor = module.InferInput(t.name, list(t.array.shape), t.datatype)
        tensor.set_data_from_numpy(t.array)
        inputs.append(tensor)
    return client, inputs


async def _run(job: WorkerJob) -> WorkerResult:
    client, inputs = _client(job)
    result = WorkerResult()
    window_start_pc = time.perf_counter() + (job.start_at - time.time())
    window_end_pc = window_start_pc + job.window_s
    cpu_at_start = None

    async def one() -> None:
        nonlocal cpu_at_start
        sent = time.perf_counter()
        try:
            # A request that never returns is an error to count and show, not a hung load run.
            await asyncio.wait_for(
                client.infer(job.model, inputs, model_version=job.version), REQUEST_TIMEOUT_S
            )
            ok, message = True, ""
        except Exception as e:  # counted and shown, never fatal to the run
            ok, message = False, str(e) or type(e).__name__
        done = time.perf_counter()
        # As perf_analyzer counts: every request that ends inside the window, whenever it was sent. Counting
        # only those sent inside it too loses one latency's worth of each window (at c=16 on the
        # ResNet-50-shaped model, 340 ms of a 3 s window: throughput read 11 % low).
        if window_start_pc <= done <= window_end_pc:
            if ok:
                result.latencies_ns.append(int((done - sent) * 1e9))
            else:
                result.errors += 1
                result.error_latencies_ns.append(int((done - sent) * 1e9))
                result.first_error = result.first_error or message

    async def closed_loop() -> None:
        while time.perf_counter() < window_end_pc:
            await one()

    async def open_loop() -> None:
        rng = np.random.default_rng(job.seed)
        next_send = time.perf_counter()
        pending = set()
        while next_send < window_end_pc:
            delay = next_send - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.001 and next_send >= window_start_pc:
                result.late_sends += 1
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            gap = 1.0 / job.rate
            next_send += rng.exponential(gap) if job.distribution == "poisson" else gap
        if pending:
            await asyncio.gather(*pending)

    try:
        # Warm up before the window (connections, server caches), then measure.
        await asyncio.sleep(max(0.0, window_start_pc - job.warmup_s - time.perf_counter()))
        cpu_task = asyncio.create_task(_cpu_at(window_start_pc))
        if job.concurrency:
            await asyncio.gather(*(closed_loop() for _ in range(job.concurrency)))
        else:
            await open_loop()
        cpu_at_start = await cpu_task
        result.cpu_s = _cpu() - cpu_at_start
    finally:
        await client.close()
    return result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _cpu_at(when_pc: float) -> float:
    await asyncio.sleep(max(0.0, when_pc - time.perf_counter()))
    return _cpu()
