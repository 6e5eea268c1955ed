"""What only a fresh interpreter shows: the CLI's exit codes, and the process-wide tuning done at import."""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.transports.grpc.tuning import LISTENER_EXPERIMENT


def _run_cli(*argv, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=timeout
    )


def test_cli_configuration_error_exits_2_with_a_message():
    result = _run_cli("--config_path", "/tmp/c.json", "--model_name", "m", "--model_path", "/m")
    assert result.returncode == 2
    assert "cannot be combined" in result.stderr


def test_cli_single_model_on_a_missing_device_exits_1_listing_devices(model_repo):
    from gateway.testing import free_port

    result = _run_cli(
        "--model_name", "dummy", "--model_path", str(model_repo / "dummy"), "--target_device", "GPU.3",
        "--port", str(free_port()), "--rest_port", str(free_port()),
        "--grpc_bind_address", "127.0.0.1", "--rest_bind_address", "127.0.0.1",
    )  # fmt: skip
    assert result.returncode == 1
    assert "'dummy'" in result.stderr and "target_device" in result.stderr and "GPU.3" in result.stderr
    assert "available devices: CPU" in result.stderr


def test_importing_the_package_sets_it_before_grpc_loads():
    # A fresh interpreter: the package's import is what first loads grpc, after the variable is set.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    code = "import gateway, os, sys; assert 'grpc' in sys.modules; print(os.environ['GRPC_EXPERIMENTS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "-" + LISTENER_EXPERIMENT


# Allocate and free what a large-output request does (a 5.5 MB output array, joined into a response),
# and print the minor page faults one such request costs once the process is warm.
_REQUEST_CYCLE = """
import resource, sys
import numpy as np
from gateway.malloc_tuning import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
def cycle():
    out = np.empty(1_376_256, np.float32)
    out[...] = 1
    return b"".join([b"header", memoryview(out).cast("B")])
for _ in range(3):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_request(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _REQUEST_CYCLE, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return float(result.stdout.split()[-1])


def test_tuned_process_reuses_large_buffers_without_page_faults():
    untuned, tuned = _faults_per_request("default"), _faults_per_request("tuned")
    pages = 5.5e6 / 4096
    assert untuned > pages / 2, f"glibc's defaults should fault the buffers in again: {untuned} faults"
    assert tuned < pages / 20, f"{tuned} page faults per request with the thresholds raised"
