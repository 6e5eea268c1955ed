"""Start the KServe peer (loadgen/bench/kserve_peer.py) on loopback for the benchmark, and stop it afterwards.

Kept apart from the peer itself: the kserve SDK must not be imported where tritonclient is (both claim
`inference.*` in protobuf's descriptor pool), so the peer always runs in a process of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.testing import GatewayProcess, free_port, free_ports


@dataclass
class PeerProcess(GatewayProcess):
    """A server process on loopback like the gateway's (ports, URLs, log, stop), answering for KServe."""

    def answered(self, model: str) -> int:
        """Requests the peer has answered for `model` (KServe's own request_predict_seconds histogram)."""
        with urllib.request.urlopen(f"http://{self.http_url}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = re.search(
            rf'^request_predict_seconds_count\{{model_name="{re.escape(model)}"\}} (\S+)$', text, re.M
        )
        return int(float(found.group(1))) if found else 0


@dataclass
class FloorProcess(PeerProcess):
    """loadgen/bench/grpc_floor.py: grpc.aio answering canned responses (gRPC only; rest_port unused)."""

    def answered(self, model: str) -> int:
        import grpc

        from gateway.proto import ovgw_grpc_service_pb2 as pb

        with grpc.insecure_channel(self.grpc_url) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelStatistics",
                request_serializer=pb.ModelStatisticsRequest.SerializeToString,
                response_deserializer=pb.ModelStatisticsResponse.FromString,
            )
            stats = call(pb.ModelStatisticsRequest(name=model), timeout=10)
        return sum(s.inference_stats.success.count for s in stats.model_stats)


PeerT = TypeVar("PeerT", bound=PeerProcess)


def start_grpc_floor(
    log_path: Path, timeout: float = 60, model: tuple[str, Path, str] | None = None, infer: bool = False
) -> FloorProcess:
    """The floor answering `simple`'s calls, or `model`'s: (name, model file, benchmark_app -shape); with
    `infer`, running the model for each call (needs `model`)."""
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - the process owns it
    cmd = [sys.executable, "-m", "loadgen.bench.grpc_floor", "--port", str(port)]
    name = "simple"
    if model is not None:
        name = model[0]
        cmd += ["--model_name", name, "--model_path", str(model[1]), "--shape", model[2]]
    if infer:
        if model is None:
            raise ValueError("the inferring floor needs a model")
        cmd.append("--infer")
    floor = FloorProcess(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), port, 0, log_path)
    return _wait_until_answering(floor, lambda: floor.answered(name) >= 0, "the gRPC floor", timeout)


def start_kserve_peer(model_name: str, model_path: Path, log_path: Path, timeout: float = 120) -> PeerProcess:
    grpc_port, rest_port = free_ports(2)
    cmd = [sys.executable, "-m", "loadgen.bench.kserve_peer", "--model_name", model_name, "--model_path",
           str(model_path), "--http_port", str(rest_port), "--grpc_port", str(grpc_port)]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115 - the process owns it
    peer = PeerProcess(
        subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), grpc_port, rest_port, log_path
    )

    def ready() -> bool:
        with urllib.request.urlopen(f"http://{peer.http_url}/v2/models/{model_name}/ready", timeout=2) as r:
            return r.status == 200

    return _wait_until_answering(peer, ready, "the KServe peer", timeout)


def _wait_until_answering(server: PeerT, answers: Callable[[], bool], what: str, timeout: float) -> PeerT:
    """Poll `answers` until it says yes (errors: not listening yet); stop the process on a timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.process.returncode}:\n{server.log()}")
        try:
            if answers():
                return server
        except Exception:  # not listening yet (connection refused, unavailable, 503)
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{what} was not ready after {timeout} s:\n{server.log()}")
