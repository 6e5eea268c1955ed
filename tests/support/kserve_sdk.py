"""The kserve SDK's clients, run in a process of their own: it and tritonclient cannot share one
(both register `inference.*` in protobuf's descriptor pool)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_kserve_sdk_client(mode: str, address: str) -> None:
    """tests/support/kserve_sdk_client.py's checks of `mode` against `address`, in a process of their own."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.kserve_sdk_client", mode, address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert "all kserve SDK checks passed" in result.stdout
