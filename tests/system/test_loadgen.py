"""python -m loadgen against a real gateway: closed and open loop, both protocols, CSV as perf_analyzer's."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_loadgen(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "loadgen", *args, "-p", "1000", "--warmup", "0.3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrency_sweep_writes_perf_analyzer_csv(gateway_server, tmp_path, protocol):
    url = gateway_server.grpc_url if protocol == "grpc" else gateway_server.http_url
    report = tmp_path / "report.csv"
    out = run_loadgen(
        "-m", "simple", "-u", url, "-i", protocol, "--concurrency-range", "1:2", "-f", str(report)
    )
    assert "Concurrency: 2, throughput:" in out and "Loader:" in out
    rows = list(csv.DictReader(report.open()))
    assert [r["Concurrency"] for r in rows] == ["1", "2"]
    for r in rows:
        assert float(r["Inferences/Second"]) > 0
        assert int(r["p99 latency"]) >= int(r["p50 latency"]) > 0
        assert int(r["Server Compute Infer"]) > 0  # filled from the statistics extension


def test_request_rate_poisson_with_batch_and_input_file(gateway_server, tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"b": [0.5] * 10}]}))
    out = run_loadgen(
        "-m", "dummy", "-u", gateway_server.http_url, "-i", "http", "-b", "2", "--input-data", str(data),
        "--request-rate-range", "100", "--request-distribution", "poisson", "--percentile", "95",
    )  # fmt: skip
    assert "Request rate: 100.0, throughput:" in out and "errors 0" in out and "p95 latency" in out


def test_errors_are_counted_and_shown(gateway_server):
    # a shape the model refuses: every request fails, the run reports it and exits non-zero
    result = subprocess.run(
        [sys.executable, "-m", "loadgen", "-m", "dummy", "-u", gateway_server.grpc_url, "-i", "grpc",
         "--shape", "b:7", "-p", "500", "--warmup", "0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "First error:" in result.stdout and "Invalid input shape" in result.stdout
