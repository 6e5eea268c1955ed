"""Scheduling through real clients: dynamic batching, request priorities, back-pressure, deadlines."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.demo_models import save
from gateway.proto import ovgw_grpc_service_pb2 as pb
from tests.support.model_builders import busy_model, busy_model_taking
from tests.support.servers import start_test_gateway

BATCH_DELAY_US = 150_000  # long enough for every concurrent client of a test to join one batch


def _entry(name: str, **settings) -> dict:
    return {"config": {"name": name, "base_path": name, **settings}}


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched")
    save(busy_model(2), root / "dyn" / "1")
    save(busy_model(2, shape=(1, 4)), root / "static" / "1")
    save(busy_model(2, shape=(-1, -1)), root / "mixed" / "1")
    save(busy_model_taking(0.05, min_matmuls=60), root / "slow" / "1")  # ~50 ms per row
    batched = {"max_batch_size": 8, "max_queue_delay_microseconds": BATCH_DELAY_US, "nireq": 1}
    entries = [
        _entry("dyn", **batched),
        _entry("static", **{**batched, "max_batch_size": 4}),
        _entry("mixed", **batched),
        # A long delay: a pair sent without waiting for it shows the preferred size at work.
        _entry(
            "preferred",
            **{
                **batched,
                "base_path": "dyn",
                "preferred_batch_size": [2],
                "max_queue_delay_microseconds": 2_000_000,
            },
        ),  # fmt: skip
        _entry("slow", nireq=1, max_queue_size=4),
        _entry("unbatched", base_path="dyn", nireq=1),
    ]
    (root / "config.json").write_text(json.dumps({"model_config_list": entries}))
    gw = start_test_gateway(["--config_path", str(root / "config.json")], root / "gw.log")
    yield gw
    assert gw.stop() == 0, gw.log()[-3000:]


def _stats(gw, model: str) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/v2/models/{model}/stats") as r:
        return json.load(r)["model_stats"][0]


def _input(values: np.ndarray) -> grpcaio.InferInput:
    x = grpcaio.InferInput("X", list(values.shape), "FP32")
    x.set_data_from_numpy(values)
    return x


async def _concurrently(gw, model: str, arrays: list[np.ndarray], **kwargs) -> list:
    """One tritonclient aio gRPC request per array, all at once; results (or exceptions) in order."""
    client = grpcaio.InferenceServerClient(gw.grpc_url)
    try:
        calls = [client.infer(model, [_input(a)], **kwargs) for a in arrays]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await client.close()


def _rows_of(request_id: int, rows: int = 1, width: int = 4) -> np.ndarray:
    # Each row encodes the request id and its row number: a swapped row cannot go unnoticed.
    return np.array([[request_id * 100 + r] * width for r in range(rows)], np.float32)


def _assert_own_rows(arrays, results):
    for sent, result in zip(arrays, results, strict=True):
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result.as_numpy("Y"), sent * 2)
        assert result.as_numpy("WORK").shape == (sent.shape[0], 1)


def test_concurrent_requests_share_executions_and_each_gets_its_own_rows(batching_server):
    before = _stats(batching_server, "dyn")
    arrays = [_rows_of(i, rows=1 + i % 3) for i in range(12)]  # 1, 2 and 3 rows: 24 rows in all
    results = asyncio.run(_concurrently(batching_server, "dyn", arrays))
    _assert_own_rows(arrays, results)
    after = _stats(batching_server, "dyn")
    executions = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == 24
    assert 3 <= executions < 12, f"{executions} executions for 12 requests of 24 rows (max batch 8)"
    sizes = {b["batch_size"] for b in after["batch_stats"]}
    assert max(sizes) <= 8 and max(sizes) > 1


def test_static_batch_model_is_reshaped_once_and_padding_never_returned(batching_server):
    gw = batching_server
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    assert client.get_model_metadata("static").inputs[0].shape == [-1, 4]
    config = client.get_model_config("static", as_json=True)["config"]
    assert config["max_batch_size"] == 4 and config["input"][0]["dims"] == ["4"]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == BATCH_DELAY_US
    before = _stats(gw, "static")
    arrays = [_rows_of(i) for i in range(7)]  # a full batch of 4 and a padded one of 3
    results = asyncio.run(_concurrently(gw, "static", arrays))
    _assert_own_rows(arrays, results)
    after = _stats(gw, "static")
    assert after["inference_count"] - before["inference_count"] == 7
    assert after["execution_count"] - before["execution_count"] == 2
    with pytest.raises(InferenceServerException, match="Invalid input shape"):
        client.infer("static", [_sync_input(_rows_of(1, rows=5))])


def _sync_input(values: np.ndarray) -> grpcclient.InferInput:
    x = grpcclient.InferInput("X", list(values.shape), "FP32")
    x.set_data_from_numpy(values)
    return x


def test_partial_batch_is_sent_when_the_oldest_request_has_waited_the_delay(batching_server):
    before = _stats(batching_server, "dyn")
    arrays = [_rows_of(i) for i in range(3)]
    started = time.perf_counter()
    results = asyncio.run(_concurrently(batching_server, "dyn", arrays))
    elapsed = time.perf_counter() - started
    _assert_own_rows(arrays, results)
    after = _stats(batching_server, "dyn")
    assert after["execution_count"] - before["execution_count"] == 1
    assert elapsed >= BATCH_DELAY_US / 1e6 * 0.9, f"a batch of 3 (max 8) went after {elapsed:.3f} s"


def test_preferred_batch_size_is_sent_without_waiting(batching_server):
    arrays = [_rows_of(1), _rows_of(2)]
    started = time.perf_counter()
    results = asyncio.run(_concurrently(batching_server, "preferred", arrays))
    _assert_own_rows(arrays, results)
    # Both arrive together: the pair is a preferred size and goes at once (or each alone, also at once).
    assert time.perf_counter() - started < 1.5  # the delay is 2 s


def test_requests_with_other_dimensions_are_never_mixed_in_a_batch(batching_server):
    arrays = [_rows_of(i, width=4 if i % 2 else 6) for i in range(8)]
    results = asyncio.run(_concurrently(batching_server, "mixed", arrays))
    _assert_own_rows(arrays, results)


def test_full_queue_refuses_at_once_and_the_server_keeps_serving(batching_server):
    gw = batching_server
    # Warm both executions (the latency one and the throughput one) first: OpenVINO allocates a compiled
    # model's working memory on its first inference, which is not what this test looks for.
    asyncio.run(_concurrently(gw, "slow", [_rows_of(i) for i in range(3)]))
    rss_before = _rss_kib(gw.process.pid)
    before = _stats(gw, "slow")
    arrays = [_rows_of(i) for i in range(40)]  # 1 running + 4 queued fit; 10x that arrives at once
    started = time.perf_counter()
    results = asyncio.run(_concurrently(gw, "slow", arrays))
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert refused and served, results
    assert all(
        r.status() == "StatusCode.RESOURCE_EXHAUSTED" and "queue is full" in r.message() for r in refused
    )
    assert time.perf_counter() - started < 40 * 0.05, "the refusals waited for the queue"
    after = _stats(gw, "slow")
    assert after["rejected_count"] - before["rejected_count"] == len(refused)
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert after["inference_count"] - before["inference_count"] == len(served)
    # Memory stays flat: nothing of the refused requests is kept.
    assert _rss_kib(gw.process.pid) - rss_before < 50_000
    # REST: 503 with Retry-After, and afterwards a normal answer.
    assert asyncio.run(_rest_flood(gw, "slow", 40)) >= 1
    result = grpcclient.InferenceServerClient(gw.grpc_url).infer("slow", [_sync_input(_rows_of(9))])
    np.testing.assert_array_equal(result.as_numpy("Y"), _rows_of(9) * 2)


def test_a_full_queue_refuses_before_decoding_the_request(batching_server):
    """Under overload a refusal should cost little: a request for a full queue is refused before its
    tensors are decoded or validated, so a malformed one arriving then is RESOURCE_EXHAUSTED too."""
    gw = batching_server
    good = [_rows_of(i) for i in range(20)]
    bad = [np.zeros((1, 5), np.float32) for _ in range(10)]  # X is [-1, 4]: wrong shape
    results = asyncio.run(_concurrently(gw, "slow", good + bad))
    bad_results = results[len(good) :]
    codes = [r.status() for r in bad_results if isinstance(r, InferenceServerException)]
    assert len(codes) == len(bad), bad_results
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes, codes  # sent behind 20 good ones: the queue was full
    assert set(codes) <= {"StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INVALID_ARGUMENT"}


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _rest_flood(gw, model: str, count: int) -> int:
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    url = f"http://{gw.http_url}/v2/models/{model}/infer"
    async with aiohttp.ClientSession() as session:

        async def one():
            async with session.post(url, json=body) as r:
                payload = await r.json()
                if r.status == 503:
                    assert r.headers.get("Retry-After") and "queue is full" in payload["error"]
                else:
                    assert r.status == 200, payload
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(count)))
    return statuses.count(503)


def test_timeout_parameter_drops_a_queued_request_before_inference(batching_server):
    gw = batching_server
    before = _stats(gw, "slow")

    async def scenario():
        client = grpcaio.InferenceServerClient(gw.grpc_url)
        try:
            blockers = [asyncio.ensure_future(client.infer("slow", [_input(_rows_of(i))])) for i in range(3)]
            await asyncio.sleep(0.02)
            started = time.perf_counter()
            with pytest.raises(InferenceServerException) as caught:
                await client.infer("slow", [_input(_rows_of(7))], timeout=20_000)  # µs, Triton's parameter
            waited = time.perf_counter() - started
            # Answered at its deadline, while the requests ahead of it still run (not when the queue drained).
            still_running = sum(not b.done() for b in blockers)
            await asyncio.gather(*blockers)
            return caught.value, waited, still_running
        finally:
            await client.close()

    error, waited, still_running = asyncio.run(scenario())
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline expired" in error.message()
    assert still_running >= 2, f"answered after {waited:.3f} s, once the queue drained, not at its deadline"
    after = _stats(gw, "slow")
    assert after["timed_out_count"] - before["timed_out_count"] == 1
    assert after["inference_count"] - before["inference_count"] == 3  # the dropped one never ran

    http = httpclient.InferenceServerClient(gw.http_url, concurrency=4)
    x = httpclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(_rows_of(1))
    blockers = [http.async_infer("slow", [x]) for _ in range(3)]
    with pytest.raises(InferenceServerException) as caught:
        http.infer("slow", [x], timeout=20_000)
    assert caught.value.status() == "504"
    for b in blockers:
        b.get_result()


def test_grpc_deadline_and_client_disconnect_drop_queued_requests(batching_server):
    gw = batching_server
    before = _stats(gw, "slow")

    async def scenario():
        client = grpcaio.InferenceServerClient(gw.grpc_url)
        try:
            blockers = [asyncio.ensure_future(client.infer("slow", [_input(_rows_of(i))])) for i in range(3)]
            await asyncio.sleep(0.02)
            with pytest.raises(InferenceServerException) as caught:
                await client.infer("slow", [_input(_rows_of(7))], client_timeout=0.03)
            async with aiohttp.ClientSession() as session:  # a REST client that gives up and disconnects
                body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
                with pytest.raises(asyncio.TimeoutError):
                    await session.post(
                        f"http://{gw.http_url}/v2/models/slow/infer",
                        json=body,
                        timeout=aiohttp.ClientTimeout(total=0.03),
                    )
            await asyncio.gather(*blockers)
            return caught.value
        finally:
            await client.close()

    error = asyncio.run(scenario())
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    time.sleep(0.2)
    after = _stats(gw, "slow")
    dropped = sum(after[k] - before[k] for k in ("timed_out_count", "cancelled_count"))
    assert dropped == 2, after
    assert after["inference_count"] - before["inference_count"] == 3


def test_request_priority_orders_a_models_queue(batching_server):
    gw = batching_server

    async def scenario():
        client = grpcaio.InferenceServerClient(gw.grpc_url)
        done: list[str] = []

        async def call(tag: str, **kwargs):
            await client.infer("slow", [_input(_rows_of(1))], **kwargs)
            done.append(tag)

        try:
            first = asyncio.ensure_future(call("first"))  # occupies the one infer request
            await asyncio.sleep(0.02)
            low = [asyncio.ensure_future(call("default")) for _ in range(2)]
            await asyncio.sleep(0.01)
            high = asyncio.ensure_future(call("high", priority=1))
            await asyncio.gather(first, high, *low)
            return done
        finally:
            await client.close()

    assert asyncio.run(scenario()) == ["first", "high", "default", "default"]


def test_schedule_policy_parameters_are_checked(batching_server):
    # tritonclient refuses to send a malformed priority itself: raw grpcio and aiohttp do.
    from tests.support.raw_grpc import RawGrpc

    raw = RawGrpc(batching_server.grpc_url)
    for name, set_value, fragment in (
        ("priority", lambda p: setattr(p, "string_param", "high"), "parameter 'priority'"),
        ("timeout", lambda p: setattr(p, "int64_param", -5), "parameter 'timeout'"),
    ):
        request = pb.ModelInferRequest(model_name="dyn")
        tensor = request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1, 2, 3, 4])
        set_value(request.parameters[name])
        with pytest.raises(grpc.RpcError) as caught:
            raw.infer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in caught.value.details()
    body = {
        "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "parameters": {"priority": -1},
    }
    req = urllib.request.Request(
        f"http://{batching_server.http_url}/v2/models/dyn/infer", json.dumps(body).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req)
    assert caught.value.code == 400 and "parameter 'priority'" in json.load(caught.value)["error"]
    meta = grpcclient.InferenceServerClient(batching_server.grpc_url).get_server_metadata()
    assert "schedule_policy" in meta.extensions


def test_unbatched_model_runs_one_request_per_execution(batching_server):
    before = _stats(batching_server, "unbatched")
    arrays = [_rows_of(i) for i in range(6)]
    results = asyncio.run(_concurrently(batching_server, "unbatched", arrays))
    _assert_own_rows(arrays, results)
    after = _stats(batching_server, "unbatched")
    assert after["execution_count"] - before["execution_count"] == 6
    assert "dynamic_batching" not in httpclient.InferenceServerClient(
        batching_server.http_url
    ).get_model_config("unbatched")


def test_batching_settings_are_validated(tmp_path):
    from gateway.config.settings import parse_model_entry
    from gateway.core.errors import ConfigError

    for bad, field in (
        ({"max_queue_delay_microseconds": 100}, "max_batch_size > 0"),
        ({"max_batch_size": 4, "preferred_batch_size": [8]}, "preferred_batch_size"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"priority": "URGENT"}, "priority"),
        ({"max_queue_size": "x"}, "max_queue_size"),
    ):
        with pytest.raises(ConfigError, match=field):
            parse_model_entry({"name": "m", "base_path": str(tmp_path), **bad})
    ok = parse_model_entry(
        {"name": "m", "base_path": str(tmp_path), "priority": "low", "max_batch_size": "8"}
    )
    assert ok.priority == 3 and ok.max_batch_size == 8


def test_model_without_a_batch_dimension_is_refused_for_batching(tmp_path):
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([1, 4], ov.Type.f32, name="X")
    y = ops.reduce_sum(x, ops.constant(np.array([0, 1], np.int64)), keep_dims=False)  # a scalar: no batch
    save(ov.Model([y.output(0)], [x], "flat"), tmp_path / "flat" / "1")
    args = ["--model_name", "flat", "--model_path", str(tmp_path / "flat"), "--max_batch_size", "4"]
    gw = start_test_gateway(args, tmp_path / "gw.log", wait_ready=False)
    try:
        code = gw.process.wait(60)
    finally:
        gw.stop()
    # As OVMS in single-model mode: the only model cannot serve, so the server says why and exits.
    assert code != 0
    assert "output 'Result" in gw.log() and "has no batch dimension 0" in gw.log()


@pytest.fixture(scope="module")
def priority_server(tmp_path_factory):
    """Two copies of a compute-bound model on the CPU, one HIGH and one LOW priority."""
    root = tmp_path_factory.mktemp("prio")
    save(busy_model(30, width=512), root / "work" / "1")  # ~25 ms per row on the dev machine
    entries = [
        _entry("high", base_path="work", priority="HIGH"),
        _entry("low", base_path="work", priority="LOW"),
    ]
    (root / "config.json").write_text(json.dumps({"model_config_list": entries}))
    gw = start_test_gateway(
        ["--config_path", str(root / "config.json"), "--priority_aging_ms", "400"], root / "gw.log"
    )
    yield gw
    assert gw.stop() == 0, gw.log()[-3000:]


def test_high_priority_model_is_dispatched_before_a_waiting_low_one(priority_server):
    gw = priority_server

    async def scenario():
        client = grpcaio.InferenceServerClient(gw.grpc_url)
        finished: dict[str, list[float]] = {"high": [], "low": []}

        async def call(model: str):
            await client.infer(model, [_input(_rows_of(1))])
            finished[model].append(time.perf_counter())

        try:
            # Connected, and both models past their first inference: nothing but the load delays a request.
            await asyncio.gather(
                client.infer("low", [_input(_rows_of(0))]), client.infer("high", [_input(_rows_of(0))])
            )
            low = [asyncio.ensure_future(call("low")) for _ in range(12)]  # the LOW model saturates the CPU
            await asyncio.sleep(0.03)
            high = [asyncio.ensure_future(call("high")) for _ in range(6)]
            await asyncio.gather(*low, *high)
            return finished
        finally:
            await client.close()

    finished = asyncio.run(scenario())
    # Once the HIGH requests wait, no LOW execution starts. Counted from the first HIGH answer, when they are
    # surely waiting whatever delayed them on the way: the LOW executions running when they arrived end
    # before it (each HIGH execution starts when one of them ends), except one that ends with it. Without
    # priorities both models share the streams and about as many LOW as HIGH requests end in that window.
    first_high, last_high = min(finished["high"]), max(finished["high"])
    overlapping = [t for t in finished["low"] if first_high < t < last_high]
    assert len(overlapping) <= 1, (len(overlapping), finished)
    assert (
        grpcclient.InferenceServerClient(gw.grpc_url).get_model_config("high").config.optimization.priority
        == 1
    )


def test_low_priority_model_is_never_starved(priority_server):
    gw = priority_server

    async def scenario():
        client = grpcaio.InferenceServerClient(gw.grpc_url)
        stop = asyncio.Event()

        async def high_loop():
            while not stop.is_set():
                await client.infer("high", [_input(_rows_of(1))])

        try:
            loops = [asyncio.ensure_future(high_loop()) for _ in range(6)]  # HIGH keeps every slot busy
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            await asyncio.wait_for(client.infer("low", [_input(_rows_of(2))]), 10)
            waited = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*loops)
            return waited
        finally:
            await client.close()

    waited = asyncio.run(scenario())
    # The aging bound (--priority_aging_ms 400) plus the executions already running ahead of it.
    assert waited < 0.4 + 1.0, f"the LOW request waited {waited:.2f} s"
