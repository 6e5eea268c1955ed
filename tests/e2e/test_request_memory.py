"""A bound on the bytes all requests hold at once (--max_request_memory): gzip bombs, large binary bodies and
large gRPC messages in parallel leave the server alive, under its bound, refusing what does not fit with 413
or 503 / RESOURCE_EXHAUSTED, while a good request is answered during them and after."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tests.support.servers import start_test_gateway

BUDGET = 512 << 20
MARGIN = 256 << 20  # allocator slack, inflate pieces in flight, the good requests
BOMB_BYTES = 1300 << 20  # inflates past the 1 GiB body limit


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """1.3 GiB of zeros, gzip'd (about 1.3 MB), made in blocks so the zeros never all exist at once."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(64 << 20)
    parts = [deflate.compress(block) for _ in range(BOMB_BYTES // len(block))]
    parts.append(deflate.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def gw(model_repo, tmp_path_factory):
    server = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--max_request_memory", str(BUDGET)],
        tmp_path_factory.mktemp("memory") / "gw.log",
    )
    yield server
    server.stop()


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _metric(gw, family: str) -> float:
    text = urllib.request.urlopen(f"http://{gw.http_url}/metrics", timeout=10).read().decode()
    return float(re.search(rf"^{family} (\S+)$", text, re.M).group(1))


async def _good_requests(url: str, stop: asyncio.Event) -> list[int]:
    statuses = []
    body = {"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]}
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.post(f"http://{url}/v2/models/dummy/infer", json=body) as response:
                statuses.append(response.status)
            await asyncio.sleep(0.05)
    return statuses


async def _send_all(url: str, bodies: list[tuple[bytes, dict]]) -> tuple[list[int], list[int]]:
    stop = asyncio.Event()
    good = asyncio.create_task(_good_requests(url, stop))

    async def send(session: aiohttp.ClientSession, data: bytes, headers: dict) -> int:
        try:
            async with session.post(f"http://{url}/v2/models/dummy/infer", data=data, headers=headers) as r:
                return r.status
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            return -1  # refused mid-body, the connection closed under the rest of the upload

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        statuses = await asyncio.gather(*(send(session, data, headers) for data, headers in bodies))
    stop.set()
    return list(statuses), await good


def test_thirty_gzip_bombs_stay_under_the_bound_and_a_good_request_is_answered(gw, bomb):
    baseline_kb = _status_kb(gw.process.pid, "VmRSS")
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    statuses, good = asyncio.run(_send_all(gw.http_url, [(bomb, headers)] * 30))
    assert set(statuses) <= {413, 503, -1} and 503 in statuses, statuses
    assert good and set(good) == {200}, good
    peak = _status_kb(gw.process.pid, "VmHWM") * 1024
    assert peak - baseline_kb * 1024 < BUDGET + MARGIN, (peak, baseline_kb)
    assert _metric(gw, "ovgw_request_memory_bytes") == 0, "every charge was returned"
    assert _metric(gw, "ovgw_request_memory_refusals") > 0
    assert _metric(gw, "ovgw_request_memory_limit_bytes") == BUDGET


def test_over_budget_binary_bodies_are_refused_and_nothing_accepted_is_lost(gw):
    data = np.zeros((1, 10), np.float32)
    header = json.dumps({"inputs": [{"name": "b", "datatype": "FP32", "shape": [1, 10],
                                     "parameters": {"binary_data_size": 40}}]}).encode()  # fmt: skip
    big = header + data.tobytes() + bytes(200 << 20)  # a 200 MB body: trailing bytes no input claims
    headers = {"Inference-Header-Content-Length": str(len(header))}
    statuses, good = asyncio.run(_send_all(gw.http_url, [(big, headers)] * 6))
    # Each is either refused for memory, or read whole and refused for its unclaimed bytes: none accepted.
    assert set(statuses) <= {400, 503, -1} and 503 in statuses, statuses
    assert good and set(good) == {200}
    assert _metric(gw, "ovgw_request_memory_bytes") == 0


def test_large_grpc_messages_past_the_bound_are_resource_exhausted(model_repo, tmp_path):
    server = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--max_request_memory", str(64 << 20)],
        tmp_path / "gw.log",
    )
    try:

        async def run() -> list[object]:
            client = grpcaio.InferenceServerClient(server.grpc_url)
            rows = np.zeros((1_000_000, 10), np.float32)  # 40 MB: two fit, not more
            x = grpcaio.InferInput("b", list(rows.shape), "FP32")
            x.set_data_from_numpy(rows)
            results = await asyncio.gather(
                *(client.infer("dummy", [x]) for _ in range(8)), return_exceptions=True
            )
            await client.close()
            return results

        results = asyncio.run(run())
        refused = [r for r in results if isinstance(r, InferenceServerException)]
        assert refused and all(r.status() == "StatusCode.RESOURCE_EXHAUSTED" for r in refused), results
        assert all("--max_request_memory" in r.message() for r in refused)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = grpcclient.InferInput("b", [1, 10], "FP32")
        x.set_data_from_numpy(np.zeros((1, 10), np.float32))
        assert client.infer("dummy", [x]).as_numpy("a").shape == (1, 10)
    finally:
        server.stop()
