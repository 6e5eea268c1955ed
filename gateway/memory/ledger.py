"""The request memory of every process of one gateway (the owner and its workers), in one shared mapping,
so that `--max_request_memory` bounds their sum.

Each process has a slot of two 64-bit counters, bytes held and refusals, which only it writes (aligned
8-byte stores, whole to any reader); a total is the sum of the slots. Taking bytes checks the total and
adds under an flock on the mapping's file, so two processes never both take the last room.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator

import numpy as np

_FIELDS = 2  # held bytes, refusals


class SharedLedger:
    def __init__(self, fd: int, slot: int, slots: int):
        """`fd`: the mapping's file (this process's own open of it: an flock is held per open file, so a
        descriptor inherited from another process would share that process's lock); `slot`: this process's."""
        self.fd = fd
        self.slot = slot
        self.slots = slots
        self._map = mmap.mmap(fd, slots * _FIELDS * 8)
        self._counters = np.frombuffer(self._map, dtype=np.int64).reshape(slots, _FIELDS)

    @classmethod
    def create(cls, slots: int) -> SharedLedger:
        """A new ledger for `slots` processes, this one in slot 0."""
        fd = os.memfd_create("ovgw-request-memory", os.MFD_CLOEXEC)
        os.ftruncate(fd, slots * _FIELDS * 8)
        return cls(fd, 0, slots)

    @classmethod
    def attach(cls, inherited_fd: int, slot: int, slots: int) -> SharedLedger:
        """The ledger a worker was handed (`inherited_fd`), opened anew for a lock of its own."""
        fd = os.open(f"/proc/self/fd/{inherited_fd}", os.O_RDWR | os.O_CLOEXEC)
        os.close(inherited_fd)
        return cls(fd, slot, slots)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def held_bytes(self) -> int:
        return int(self._counters[:, 0].sum())

    def refusals(self) -> int:
        return int(self._counters[:, 1].sum())

    def set_held(self, held: int) -> None:
        self._counters[self.slot, 0] = held

    def set_refusals(self, refusals: int) -> None:
        self._counters[self.slot, 1] = refusals

    def clear(self, slot: int) -> None:
        """Zero a dead process's slot, before its replacement starts: what its requests held is gone."""
        self._counters[slot] = 0

    def close(self) -> None:
        del self._counters
        self._map.close()
        os.close(self.fd)
