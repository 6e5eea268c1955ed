"""Worker processes (`--grpc_workers`, `--rest_workers`): the protocol work in several processes, one
process owning the models. Real clients on loopback; each new client is a new connection, which the
kernel gives to any of the workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.demo_models import save
from gateway.testing import GatewayProcess, start_gateway
from tests.support.metrics import scrape, value
from tests.support.model_builders import busy_model, busy_model_taking
from tests.support.servers import start_test_gateway

WORKERS = ["--grpc_workers", "3", "--rest_workers", "3"]  # the owner and 2 worker processes serve
BATCH_DELAY_US = 300_000  # long enough for every client of a test to join one batch


def _entry(name: str, **settings) -> dict:
    return {"config": {"name": name, "base_path": name, **settings}}


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    save(busy_model(2), root / "dyn" / "1")
    save(busy_model_taking(0.03, min_matmuls=40), root / "slow" / "1")  # ~30 ms per row
    entries = [
        _entry("dyn", max_batch_size=8, max_queue_delay_microseconds=BATCH_DELAY_US, nireq=1),
        _entry("slow", nireq=2),
    ]
    (root / "config.json").write_text(json.dumps({"model_config_list": entries}))
    args = ["--config_path", str(root / "config.json"), "--allow_client_shm", "true", *WORKERS]
    gw = start_test_gateway(args, root / "gw.log")
    yield gw
    assert gw.stop() == 0, gw.log()[-3000:]


def workers_of(gw: GatewayProcess) -> list[int]:
    children = Path(f"/proc/{gw.process.pid}/task/{gw.process.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _stats(gw: GatewayProcess, model: str) -> dict:
    with urllib.request.urlopen(f"http://{gw.http_url}/v2/models/{model}/stats") as r:
        return json.load(r)["model_stats"][0]


def _x(rows: int, value: float = 1.0) -> np.ndarray:
    return np.full((rows, 4), value, np.float32)


def _grpc_infer(gw: GatewayProcess, model: str, x: np.ndarray, **kwargs) -> np.ndarray:
    client = grpcclient.InferenceServerClient(gw.grpc_url)  # a new connection each time
    try:
        tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor], **kwargs).as_numpy("Y")
    finally:
        client.close()


def _http_infer(gw: GatewayProcess, model: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(gw.http_url)
    try:
        tensor = httpclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        return client.infer(model, [tensor]).as_numpy("Y")
    finally:
        client.close()


def _listening_pids(port: int) -> set[int]:
    """The processes with a socket listening on `port` (loopback, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in inodes:
                pids.add(int(fd.parts[2]))
        except OSError:
            pass  # a process or descriptor that went away meanwhile
    return pids


def test_the_owner_and_the_workers_all_serve_both_ports(workers_server):
    gw = workers_server
    workers = workers_of(gw)
    assert len(workers) == 2
    assert "2 worker process(es) beside this one: gRPC served by 3 processes, REST by 3" in gw.log()
    serving = {gw.process.pid, *workers}
    assert _listening_pids(gw.grpc_port) == serving
    assert _listening_pids(gw.rest_port) == serving


def test_both_transports_answer_through_the_workers(workers_server):
    for i in range(6):  # new connections: both workers answer some
        assert np.array_equal(_grpc_infer(workers_server, "dyn", _x(1, i)), _x(1, 2 * i))
        assert np.array_equal(_http_infer(workers_server, "dyn", _x(2, i)), _x(2, 2 * i))
    client = grpcclient.InferenceServerClient(workers_server.grpc_url)
    meta = client.get_model_metadata("dyn", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["X"] and client.is_model_ready("dyn")
    client.close()


def test_requests_through_different_workers_batch_together(workers_server):
    before = _stats(workers_server, "dyn")
    results: dict[int, np.ndarray] = {}

    def send(i: int) -> None:
        infer = _grpc_infer if i % 2 else _http_infer
        results[i] = infer(workers_server, "dyn", _x(1, i))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    after = _stats(workers_server, "dyn")
    assert all(np.array_equal(results[i], _x(1, 2 * i)) for i in range(8))
    assert after["inference_count"] - before["inference_count"] == 8
    # one execution for all eight (the delay holds the batch open), whichever worker each came through
    assert after["execution_count"] - before["execution_count"] == 1


def test_every_outcome_is_counted_once_by_the_owner_whichever_worker_served_it(workers_server):
    gw = workers_server
    before, metrics_before = _stats(gw, "dyn"), scrape(gw)
    for _ in range(3):
        _grpc_infer(gw, "dyn", _x(1))
        _http_infer(gw, "dyn", _x(1))
    # one invalid request on each transport (a wrong shape), decoded and refused in a worker
    with pytest.raises(InferenceServerException):
        _grpc_infer(gw, "dyn", np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException):
        _http_infer(gw, "dyn", np.ones((1, 5), np.float32))
    # a request for a model that does not exist: unrouted
    request = urllib.request.Request(
        f"http://{gw.http_url}/v2/models/nope/infer", data=b'{"inputs": []}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 404
    after, metrics_after = _stats(gw, "dyn"), scrape(gw)
    success = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    failed = after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"]
    assert (success, failed) == (6, 2)

    def delta(family: str, **labels) -> float:
        return value(metrics_after, family, **labels) - value(metrics_before, family, **labels)

    for interface in ("gRPC", "REST"):
        labels = {"interface": interface, "method": "ModelInfer", "name": "dyn", "version": "1"}
        assert delta("ovms_requests_success", **labels) == 3
        assert delta("ovms_requests_fail", **labels) == 1


def test_load_and_unload_through_any_worker_act_on_the_owner(workers_server):
    gw = workers_server
    request = urllib.request.Request(f"http://{gw.http_url}/v2/repository/models/slow/unload", method="POST")
    urllib.request.urlopen(request).close()
    for _ in range(4):  # every worker (new connections) sees it unloaded
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        assert not client.is_model_ready("slow")
        client.close()
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    client.load_model("slow")
    client.close()
    assert np.array_equal(_http_infer(gw, "slow", _x(1, 3)), _x(1, 6))


def test_a_killed_worker_is_replaced_and_its_neighbours_keep_answering(workers_server):
    gw = workers_server
    victim, *_ = workers_of(gw)
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def neighbour() -> None:
        while not stop.is_set():
            try:
                _http_infer(gw, "slow", _x(1))
                answered[0] += 1
            except Exception as e:  # a connection to the killed worker: tritonclient's or gevent's error
                failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=neighbour) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = workers_of(gw)
        if len(workers) == 2 and victim not in workers:
            break
        time.sleep(0.1)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(workers_of(gw)) == 2 and victim not in workers_of(gw), gw.log()[-2000:]
    assert f"worker process 0 (pid {victim}) exited" in gw.log() or "exited with -9" in gw.log()
    # Only requests in flight on the killed worker's connections may fail; the rest were answered.
    assert answered[0] > 10 and len(failures) <= 3, failures
    for _ in range(6):  # the replacement serves
        assert np.array_equal(_grpc_infer(gw, "dyn", _x(1, 5)), _x(1, 10))


def test_sigterm_drains_every_process_and_exits_zero(tmp_path):
    save(busy_model_taking(0.03, min_matmuls=40), tmp_path / "slow" / "1")
    gw = start_test_gateway(
        ["--model_name", "slow", "--model_path", str(tmp_path / "slow"), *WORKERS], tmp_path / "gw.log"
    )
    workers = workers_of(gw)
    outcomes: list[str] = []
    lock = threading.Lock()

    def client_loop(infer) -> None:
        refusals = 0
        while refusals < 2:
            try:
                infer(gw, "slow", _x(1))
                kind = "ok"
            except InferenceServerException as e:
                refused = e.status() in ("StatusCode.UNAVAILABLE", "503")
                kind = "refused" if refused else f"lost: {e}"
            except ConnectionRefusedError:
                kind = "refused"  # the ports closed between two requests
            except Exception as e:  # e.g. gevent's HTTPConnectionClosed: a request cut off
                kind = f"lost: {type(e).__name__}: {e}"
            with lock:
                outcomes.append(kind)
            refusals += kind != "ok"

    threads = [threading.Thread(target=client_loop, args=(f,)) for f in (_grpc_infer, _http_infer) * 2]
    for t in threads:
        t.start()
    time.sleep(1.5)
    gw.process.terminate()
    for t in threads:
        t.join(60)
    assert gw.process.wait(60) == 0, gw.log()[-3000:]
    assert not [o for o in outcomes if o.startswith("lost")], outcomes
    assert outcomes.count("ok") > 4
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_when_the_owner_dies_the_workers_answer_unavailable_and_exit(tmp_path):
    save(busy_model(2), tmp_path / "dyn" / "1")
    gw = start_test_gateway(
        ["--model_name", "dyn", "--model_path", str(tmp_path / "dyn"), *WORKERS], tmp_path / "gw.log"
    )
    workers = workers_of(gw)
    gw.process.kill()
    gw.process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "workers outlived their owner"
    assert "the owner process is gone" in gw.log()


def test_a_port_in_use_fails_the_start_naming_it(tmp_path):
    save(busy_model(2), tmp_path / "dyn" / "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--model_name", "dyn", "--model_path", str(tmp_path / "dyn"), "--rest_port", str(port)]
        gw = start_gateway([*args, *WORKERS], tmp_path / "gw.log", wait_ready=False)
        assert gw.process.wait(60) == 2, gw.log()[-2000:]
    assert f"cannot bind 127.0.0.1:{port}" in gw.log()


def test_a_restart_on_the_same_ports_binds_despite_the_last_ones_connections(tmp_path):
    """A connection the server closed lingers in TIME_WAIT on the server's port for a minute; a gateway
    started again at once binds the port all the same, as any server does (SO_REUSEADDR). The first one
    runs in one process: its connections' sockets did not share the port (SO_REUSEPORT)."""
    save(busy_model(2), tmp_path / "dyn" / "1")
    args = ["--model_name", "dyn", "--model_path", str(tmp_path / "dyn")]
    first = start_test_gateway([*args, "--grpc_workers", "1", "--rest_workers", "1"], tmp_path / "first.log")
    try:
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", first.rest_port)) as client:
                client.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := client.recv(4096):  # until the server closes the connection
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        assert first.stop() == 0, first.log()[-3000:]
    ports = (first.grpc_port, first.rest_port)
    again = start_test_gateway([*args, *WORKERS], tmp_path / "again.log", ports=ports)
    try:
        assert np.array_equal(_http_infer(again, "dyn", _x(1, 2)), _x(1, 4))
    finally:
        assert again.stop() == 0, again.log()[-3000:]


def test_regions_registered_and_unregistered_through_any_process_reach_every_process(workers_server):
    """Each call on a new connection, which the kernel gives to the owner or to a worker: whichever
    registered or unregistered a region, every process then decodes against it, or refuses it."""
    import tritonclient.utils.shared_memory as shm

    gw = workers_server
    x = _x(1, 3)
    for round_ in range(6):
        name, key = f"round{round_}", f"/ovgw_workers_{os.getpid()}_{round_}"
        handle = shm.create_shared_memory_region(name, key, x.nbytes)
        try:
            shm.set_shared_memory_region(handle, [x])
            httpclient.InferenceServerClient(gw.http_url).register_system_shared_memory(name, key, x.nbytes)
            for _ in range(6):
                client = httpclient.InferenceServerClient(gw.http_url)
                tensor = httpclient.InferInput("X", [1, 4], "FP32")
                tensor.set_shared_memory(name, x.nbytes)
                assert np.array_equal(client.infer("dyn", [tensor]).as_numpy("Y"), _x(1, 6))
                client.close()
            httpclient.InferenceServerClient(gw.http_url).unregister_system_shared_memory(name)
            for _ in range(6):
                client = httpclient.InferenceServerClient(gw.http_url)
                tensor = httpclient.InferInput("X", [1, 4], "FP32")
                tensor.set_shared_memory(name, x.nbytes)
                with pytest.raises(InferenceServerException, match=name):
                    client.infer("dyn", [tensor])
                client.close()
        finally:
            shm.destroy_shared_memory_region(handle)
