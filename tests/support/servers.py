"""Servers the tests start: gateways for tests that are not about load-adaptive execution, and the helpers
that start and stop the other servers (object stores) on loopback."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.testing import GatewayProcess, start_gateway


def start_test_gateway(args: list[str], log_path: Path, **kwargs: Any) -> GatewayProcess:
    """start_gateway with one execution per model (unless `args` choose): start-up compiles each model once,
    and no inline execution compiles in the background while the test runs. The session's shared gateway
    (tests/conftest.py) and tests/e2e/test_adaptive_execution.py keep the default."""
    if not any(a.startswith("--adaptive_execution") for a in args):
        args = [*args, "--adaptive_execution", "false"]
    return start_gateway(args, log_path, **kwargs)


def wait_until_answering(process: subprocess.Popen, url: str, what: str, timeout: float = 60) -> None:
    """Until `url` answers any HTTP status (the server is up); RuntimeError if `process` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # an error status is an answer
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
