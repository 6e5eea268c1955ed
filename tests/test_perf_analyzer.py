"""Triton's real perf_analyzer binary against the gateway, over gRPC and HTTP.

perf_analyzer reads ModelMetadata, ModelConfig and ServerMetadata (all fatal if
missing), then ModelStatistics around every measurement window: each run must
exit 0 with a non-zero throughput and the server-side statistics in its report.
The binary comes from `make perf-analyzer` (loadgen/install_perf_analyzer.sh);
the tests skip, saying why, only when that install is impossible here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = ROOT / ".cache" / "perf_analyzer" / "perf_analyzer"
# 2 shared cores are noisy: wide stability bounds keep the runs from failing on jitter, not on the gateway.
STEADY = ["--measurement-interval", "800", "-s", "100", "-r", "12"]


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    binary = Path(os.environ.get("PERF_ANALYZER", DEFAULT_BINARY))
    if not binary.exists():
        import sys

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


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrency_sweep(perf_analyzer, gateway_server, protocol):
    url = gateway_server.grpc_url if protocol == "grpc" else gateway_server.http_url
    output = run_pa(perf_analyzer, "-m", "simple", "-u", url, "-i", protocol, "--concurrency-range", "1:4")
    assert_report(output, levels=4)
    for level in range(1, 5):
        assert re.search(rf"Concurrency: {level}, throughput: [\d.]+ infer/sec", output)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_batch_of_four_on_a_batchable_model(perf_analyzer, gateway_server, protocol):
    url = gateway_server.grpc_url if protocol == "grpc" else gateway_server.http_url
    output = run_pa(perf_analyzer, "-m", "dummy", "-u", url, "-i", protocol, "-b", "4")
    assert_report(output)
    assert "Batch size: 4" in output
    inferences = int(re.search(r"Inference count: (\d+)", output).group(1))
    executions = int(re.search(r"Execution count: (\d+)", output).group(1))
    assert inferences == 4 * executions  # statistics count batch elements, not requests


def test_streaming(perf_analyzer, gateway_server):
    output = run_pa(
        perf_analyzer, "-m", "simple", "-u", gateway_server.grpc_url, "-i", "grpc", "--streaming",
        "--concurrency-range", "1:2",
    )  # fmt: skip
    assert_report(output, levels=2)


def test_input_data_file_and_csv_report(perf_analyzer, gateway_server, tmp_path):
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{"INPUT0": list(range(16)), "INPUT1": [1] * 16}]}))
    report = tmp_path / "report.csv"
    output = run_pa(
        perf_analyzer, "-m", "simple", "-u", gateway_server.http_url, "-i", "http",
        "--input-data", str(data), "-f", str(report),
    )  # fmt: skip
    assert_report(output)
    rows = list(csv.DictReader(report.open()))
    assert len(rows) == 1
    row = rows[0]
    assert float(row["Inferences/Second"]) > 0
    for column in ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output"):
        assert column in row
    assert int(row["Server Compute Infer"]) > 0
