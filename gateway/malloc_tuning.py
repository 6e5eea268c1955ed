"""glibc malloc settings for a process that allocates and frees megabytes per request.

glibc's defaults hand a freed buffer of megabytes back to the kernel and fault fresh pages in for the next
request; raising both the mmap and the trim thresholds keeps such buffers for reuse, at the cost of up to
TRIM_THRESHOLD of freed heap kept. glibc's own environment variables (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, MALLOC_ARENA_MAX ...) win: when any is set, malloc is left as the
user configured it. Other C libraries (musl) are left alone. Evidence: docs/design/malloc-thresholds.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc's own sliding threshold ever reaches on 64-bit
TRIM_THRESHOLD = 128 * 1024 * 1024

log = logging.getLogger("ovgw")


def tune_malloc(environ: Mapping[str, str] | None = None) -> bool:
    """Apply the thresholds above; False (and nothing changed) where the user set glibc's variables or
    the C library is not glibc."""
    if any(name.startswith("MALLOC_") for name in (os.environ if environ is None else environ)):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not tuned:
        log.warning("could not raise malloc's mmap/trim thresholds; large tensors will cost page faults")
    return tuned
