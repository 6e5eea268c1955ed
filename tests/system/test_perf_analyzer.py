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
import re

import pytest

from tests.support.perf_analyzer import assert_report, run_pa


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrency_sweep(perf_analyzer, gateway_server, protocol):
    url = gateway_server.grpc_url if protocol == "grpc" else gateway_server.http_url
    # Two levels of a range with a step: a sweep, and concurrency above one, in a third of the time of 1:4.
    output = run_pa(perf_analyzer, "-m", "simple", "-u", url, "-i", protocol, "--concurrency-range", "1:4:3")
    assert_report(output, levels=2)
    for level in (1, 4):
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


@pytest.fixture(scope="module")
def shm_server(model_repo, tmp_path_factory):
    from tests.support.servers import start_test_gateway

    server = start_test_gateway(
        ["--config_path", str(model_repo / "config.json"), "--allow_client_shm"],
        tmp_path_factory.mktemp("shm-logs") / "gw.log",
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    "protocol, model, extra",
    [
        ("grpc", "simple", ["--concurrency-range", "1:2"]),  # fixed-size outputs
        # a variable output ([-1, 10]) is written into the region perf_analyzer sized for it
        ("http", "dummy", ["--output-shared-memory-size", "4096"]),
    ],
)
def test_system_shared_memory(perf_analyzer, shm_server, protocol, model, extra):
    url = shm_server.grpc_url if protocol == "grpc" else shm_server.http_url
    output = run_pa(
        perf_analyzer, "-m", model, "-u", url, "-i", protocol, "--shared-memory=system", *extra
    )  # fmt: skip
    assert_report(output, levels=2 if model == "simple" else 1)


def test_a_scalar_input_shown_as_triton_shows_it(perf_analyzer, model_repo, tmp_path):
    """perf_analyzer refuses an empty input shape: with `scalar_shape: [1]` the metadata shows Triton's form
    and perf_analyzer drives the model's INT64 and BYTES scalar inputs (gRPC here; the shapes are the
    metadata's, the same on both transports)."""
    from tests.support.servers import start_test_gateway

    entry = {"name": "scalars", "base_path": str(model_repo / "scalars"), "scalar_shape": [1]}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": entry}]}))
    server = start_test_gateway(["--config_path", str(config)], tmp_path / "gw.log")
    try:
        output = run_pa(perf_analyzer, "-m", "scalars", "-u", server.grpc_url, "-i", "grpc")
        assert_report(output)
    finally:
        server.stop()
