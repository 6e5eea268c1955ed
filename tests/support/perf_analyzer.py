"""Triton's perf_analyzer binary: find (or install) it, run it, and check the report it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = ROOT / ".cache" / "perf_analyzer" / "perf_analyzer"
# 2 shared cores are noisy: wide stability bounds keep the runs from failing on jitter, not on the gateway.
STEADY = ["--measurement-interval", "800", "-s", "100", "-r", "12"]


def find_perf_analyzer() -> str:
    """The binary from `make perf-analyzer`, installed now if missing; the test skips if it cannot be."""
    binary = Path(os.environ.get("PERF_ANALYZER", DEFAULT_BINARY))
    if not binary.exists():
        result = subprocess.run(
            [str(ROOT / "loadgen" / "install_perf_analyzer.sh"), str(binary.parent), sys.executable],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0 or not binary.exists():
            pytest.skip(
                f"perf_analyzer could not be installed here: {(result.stdout + result.stderr)[-800:]}"
            )
    return str(binary)


def run_pa(binary: str, *args: str, timeout: int = 240) -> str:
    result = subprocess.run([binary, *args, *STEADY], capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def assert_report(output: str, levels: int = 1) -> None:
    throughputs = [float(x) for x in re.findall(r"Throughput: ([\d.]+) infer/sec", output)]
    assert len(throughputs) >= levels and all(t > 0 for t in throughputs), output[-2000:]
    # The "Server:" block exists only when the statistics extension answered with true figures.
    assert output.count("Server:") >= levels, output[-2000:]
    counts = [int(x) for x in re.findall(r"Inference count: (\d+)", output)]
    assert counts and all(c > 0 for c in counts), output[-2000:]
    assert re.search(r"queue \d+ usec", output), output[-2000:]
