"""kserve SDK clients (InferenceRESTClient, InferenceGRPCClient) against a real gateway.

They run in a child process: the kserve SDK and tritonclient cannot share one
(both register `inference.*` in protobuf's descriptor pool).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_kserve_sdk_client(mode: str, address: str) -> None:
    """tests/kserve_sdk_client.py's checks of `mode` against `address`, in a process of their own."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.kserve_sdk_client", mode, address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert "all kserve SDK checks passed" in result.stdout


@pytest.mark.parametrize("mode", ["rest", "grpc"])
def test_kserve_sdk_client(gateway_server, mode):
    run_kserve_sdk_client(mode, gateway_server.http_url if mode == "rest" else gateway_server.grpc_url)
