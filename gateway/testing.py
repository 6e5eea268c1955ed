"""Start a real gateway process on loopback (for tests and benchmarks), and stop it afterwards."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: all held at once while they are chosen, since a port given
    back may be the next one the kernel hands out."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    grpc_port: int
    rest_port: int
    log_path: Path
    # The context a client trusts the gateway's TLS certificate with (and presents its own, for mutual
    # TLS); None: plaintext.
    ssl_context: ssl.SSLContext | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# Set to N, every gateway started here serves both transports from N processes, the owner and N - 1
# worker processes (make test runs the protocol tests once that way), unless its arguments choose.
TEST_WORKERS_ENV = "OVGW_TEST_WORKERS"


def start_gateway(
    args: list[str],
    log_path: Path,
    wait_ready: bool = True,
    timeout: float = 90,
    ssl_context: ssl.SSLContext | None = None,
    env: Mapping[str, str] | None = None,
    ports: tuple[int, int] | None = None,
    module: str = "gateway",
) -> GatewayProcess:
    """`python -m gateway args` (or `module`) on two free loopback ports (or `ports`: gRPC, REST), its output
    in `log_path`, in `env` (default: this process's environment); once `wait_ready`, its /v2/health/ready
    answers 200."""
    grpc_port, rest_port = ports or free_ports(2)
    workers = os.environ.get(TEST_WORKERS_ENV)
    if workers and not any(a in args for a in ("--grpc_workers", "--rest_workers")):
        args = [*args, "--grpc_workers", workers, "--rest_workers", workers]
    cmd = [
        sys.executable, "-m", module,
        "--port", str(grpc_port), "--rest_port", str(rest_port),
        "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
        *args,
    ]  # fmt: skip
    log_file = open(log_path, "wb")  # noqa: SIM115 - the process owns it
    process = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ if env is None else env)
    )
    gw = GatewayProcess(process, grpc_port, rest_port, log_path, ssl_context)
    if wait_ready:
        wait_until_ready(gw, timeout)
    return gw


def wait_until_ready(gw: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {gw.process.returncode}:\n{gw.log()}")
        scheme = "https" if gw.ssl_context is not None else "http"
        try:
            with urllib.request.urlopen(
                f"{scheme}://{gw.http_url}/v2/health/ready", timeout=2, context=gw.ssl_context
            ) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    gw.stop()
    raise RuntimeError(f"gateway not ready after {timeout} s:\n{gw.log()}")
