"""The clock the scheduler and the device gate read and set timers on.

Production code uses the event loop's monotonic clock; unit tests hand in a manual
clock, so batching delays, deadlines and priority aging are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


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

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_at(when, callback)
