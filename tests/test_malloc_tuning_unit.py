"""malloc tuning: a freed multi-megabyte buffer is reused, not faulted in again (counted in page faults)."""

from __future__ import annotations

import subprocess
import sys

from gateway.malloc_tuning import tune_malloc

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


def test_the_users_own_malloc_settings_win():
    assert tune_malloc({"MALLOC_ARENA_MAX": "2"}) is False
    assert tune_malloc({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
