"""One bound on the bytes that requests in flight hold: REST bodies as they are read and inflated, gRPC
messages once received, the tensors decoded from them that are not views of them, and batches' copies. A
request is charged as its bytes arrive and refused (RESOURCE_EXHAUSTED; REST 503 with Retry-After) the moment
it would take the total past the bound, before it allocates more; its charge is returned when its response
has been sent. Refusing at once rather than waiting for room keeps a flood of large requests from holding
memory while they wait, and tells the client to come back.

Without it each request is bounded by the body and message limits, but nothing bounds their sum: twenty
gzip bombs of 1 GiB each end in the OOM killer, and every accepted request with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gateway.core.errors import ResourceExhausted
from gateway.memory.ledger import SharedLedger

# The default bound: this share of the memory the process may use (its cgroup's limit, else the machine's).
DEFAULT_SHARE = 0.5
# A request's first bytes up to this much may use the whole bound; past it, a request may use the bound
# less a reserve (an eighth of it, at most RESERVE_BYTES), so that a flood of large requests leaves room for
# the ordinary ones.
SMALL_REQUEST_BYTES = 1 << 20
RESERVE_BYTES = 64 << 20


class MemoryBudgetExceeded(ResourceExhausted):
    """A request that would take the bytes requests hold past the bound."""


class RequestMemoryBudget:
    def __init__(self, limit_bytes: int, shared: SharedLedger | None = None):
        """`limit_bytes`: the bound (0 = none, nothing charged is ever refused). `shared`: the ledger of all
        the gateway's processes (worker processes), whose sum the bound applies to; None: this process
        alone."""
        self.limit_bytes = limit_bytes
        self._large_limit = limit_bytes - min(limit_bytes // 8, RESERVE_BYTES)
        self._shared = shared
        self._held = 0  # this process's
        self._refusals = 0

    @property
    def held_bytes(self) -> int:
        """What requests hold now, in every process of the gateway."""
        return self._held if self._shared is None else self._shared.held_bytes()

    @property
    def refusals(self) -> int:
        return self._refusals if self._shared is None else self._shared.refusals()

    def charge(self) -> Charge:
        """A request's account: grown as its bytes arrive, returned with `release()` (or `with`)."""
        return Charge(self)

    def _take(self, count: int, what: str, request_bytes: int) -> None:
        """Take `count` bytes for a request that then holds `request_bytes`."""
        if not self.limit_bytes:
            self._adjust(count)
            return
        limit = self.limit_bytes if request_bytes <= SMALL_REQUEST_BYTES else self._large_limit
        with contextlib.nullcontext() if self._shared is None else self._shared.locked():
            held = self.held_bytes
            if held + count > limit:
                self._refusals += 1
                if self._shared is not None:
                    self._shared.set_refusals(self._refusals)
                raise MemoryBudgetExceeded(
                    f"{what}: the server's requests already hold {held} of the "
                    f"{self.limit_bytes} bytes they may (--max_request_memory); retry later"
                )
            self._adjust(count)

    def _adjust(self, count: int) -> None:
        self._held += count
        if self._shared is not None:
            self._shared.set_held(self._held)


class Charge:
    """The bytes one request holds against the budget."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: RequestMemoryBudget):
        self._budget = budget
        self.held = 0

    def grow(self, count: int, what: str = "the request") -> None:
        """Account for `count` more bytes before they are allocated; MemoryBudgetExceeded if no room."""
        if count > 0:
            self._budget._take(count, what, self.held + count)
            self.held += count

    def add(self, count: int) -> None:
        """Account for `count` bytes that must be allocated whatever the bound (the copy a batch makes of
        requests already admitted): later requests see the room they took."""
        self._budget._adjust(count)
        self.held += count

    def give_back(self, count: int) -> None:
        """Return `count` bytes charged ahead of need."""
        count = min(count, self.held)
        self._budget._adjust(-count)
        self.held -= count

    def release(self) -> None:
        self._budget._adjust(-self.held)
        self.held = 0

    def __enter__(self) -> Charge:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def decoded_bytes(arrays: Iterable[np.ndarray]) -> int:
    """What decoded tensors hold beyond the bytes they came in: arrays built from JSON `data` or typed gRPC
    contents (a view of a body, a message or a region holds nothing more), BYTES elements included."""
    total = 0
    for array in arrays:
        if not array.flags.owndata:
            continue
        total += array.nbytes
        if array.dtype == object:
            total += sum(len(item) for item in array.ravel() if isinstance(item, bytes | str))
    return total


def memory_limit_bytes() -> int:
    """What this process may use: its cgroup's memory limit (v2, then v1) when there is one, else the
    machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(text)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def default_budget_bytes() -> int:
    return int(memory_limit_bytes() * DEFAULT_SHARE)
