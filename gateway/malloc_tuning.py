"""glibc malloc settings for a process that allocates and frees megabytes per request.

A request to a model with large tensors allocates buffers of megabytes (the request's bytes, the output
arrays, the response), frees them when it is answered, and allocates them again for the next one. glibc's
defaults hand such a buffer back to the kernel on free (an mmap'ed chunk, or the trimmed top of the heap)
and fault fresh zeroed pages in for the next: on a 5.5 MB output (`make bench`'s segmentation model) an
array filled and joined into a response cost 4.3 ms of CPU per request that way, 0.52 ms with the two
thresholds below (same process, same loop). Raising only one of the two does not help: with only the mmap
threshold raised the top of the heap is still trimmed on every free, with only the trim threshold every
buffer is still an mmap.

The cost is memory: up to TRIM_THRESHOLD of freed heap is kept for reuse instead of returned; a buffer of
MMAP_THRESHOLD or more is still mapped and unmapped on its own. glibc's own environment variables
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, MALLOC_ARENA_MAX ...) win: when any is
set, the gateway leaves malloc as the user configured it. Other C libraries (musl) are left alone.
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
