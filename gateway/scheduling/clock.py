"""The clock the scheduler and the device gate read and set timers on.

Production code uses the event loop's monotonic clock; unit tests hand in a manual clock, so batching
delays, deadlines and priority aging are tested without sleeping. Timers due within PRECISE_BELOW_S go to a
timerfd the loop watches, since the loop's own timers are whole milliseconds and a batching delay is often a
fraction of one (Linux; elsewhere, and for longer timers, the loop's own): docs/design/precise-timers.md.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("ovgw")

PRECISE_BELOW_S = 0.02  # timers due sooner than this go to the timerfd


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic time in seconds (time.monotonic's clock: deadlines are given in it)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` once `now()` reaches `when`."""
        ...


class LoopClock:
    """time.monotonic and the event loop's timers. Not loop.time(): uvloop caches it once per loop
    iteration at millisecond resolution, too coarse for queue times and batching delays in µs. Both
    read CLOCK_MONOTONIC, so a time from now() is a valid call_at() time."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop or asyncio.get_running_loop()
        self._precise = PreciseTimers.of(self._loop)

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        if self._precise is not None and when - time.monotonic() < PRECISE_BELOW_S:
            return self._precise.call_at(when, callback)
        return self._loop.call_at(when, callback)


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _timespec), ("it_value", _timespec)]


_CLOCK_MONOTONIC = 1  # from Linux's time.h and timerfd.h
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Entry:
    """One pending timer: cancel() marks it, and the heap drops it when it comes up."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class PreciseTimers:
    """One event loop's short timers on one timerfd (absolute CLOCK_MONOTONIC times, time.monotonic's
    clock), armed for the earliest; the loop reads it when it fires and calls what is due."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PreciseTimers | None] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> PreciseTimers | None:
        """The loop's timers, made on first use; None where there is no timerfd."""
        if loop not in cls._by_loop:
            try:
                cls._by_loop[loop] = cls(loop)
            except (OSError, AttributeError, NotImplementedError) as e:  # not Linux, or no add_reader
                log.debug("no timerfd for precise timers (%s); the loop's timers are used", e)
                cls._by_loop[loop] = None
        return cls._by_loop[loop]

    def __init__(self, loop: asyncio.AbstractEventLoop):
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_itimerspec), ctypes.c_void_p]
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd
        # Weakly: the loop's reader holds this object, and _by_loop's value must not keep its key alive.
        self._loop = weakref.ref(loop)
        self._heap: list[tuple[float, int, _Entry]] = []
        self._sequence = itertools.count()  # equal times fire in the order they were set
        self._armed_for: float | None = None
        self._spec = _itimerspec()
        loop.add_reader(fd, self._fired)
        # The fd lives as long as the loop (a closed loop has already dropped its readers).
        weakref.finalize(loop, os.close, fd)

    def call_at(self, when: float, callback: Callable[[], None]) -> _Entry:
        entry = _Entry(callback)
        heapq.heappush(self._heap, (when, next(self._sequence), entry))
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)
        return entry

    def _arm(self, when: float | None) -> None:
        value = self._spec.it_value
        if when is None:  # disarm: a zero it_value
            value.tv_sec, value.tv_nsec = 0, 0
        else:
            # A zero it_value would disarm: a time already past is armed for 1 ns, which fires at once.
            seconds, fraction = divmod(max(when, 1e-9), 1.0)
            value.tv_sec, value.tv_nsec = int(seconds), max(1, int(fraction * 1e9))
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_for = when

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count; reading it clears the readiness
        except BlockingIOError:  # re-armed since it fired
            pass
        loop = self._loop()
        if loop is None:
            return
        now = time.monotonic()
        heap = self._heap
        while heap and (heap[0][0] <= now or heap[0][2].cancelled):
            _, _, entry = heapq.heappop(heap)
            if not entry.cancelled:
                loop.call_soon(entry.callback)
        self._arm(heap[0][0] if heap else None)
