"""LoopClock's timers: short ones on the loop's timerfd (PreciseTimers), longer ones on the loop's own.

No timing thresholds (those are a benchmark's business, clock.py has the figures): a timer never fires
before its time, fires in time order, and a cancelled one does not fire; on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from gateway.scheduling.clock import PRECISE_BELOW_S, LoopClock, PreciseTimers

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="timerfd is Linux's")


async def _fire_in_order() -> None:
    clock = LoopClock()
    assert PreciseTimers.of(asyncio.get_running_loop()) is not None
    start = time.monotonic()
    fired: list[tuple[str, float, float]] = []
    done = asyncio.get_running_loop().create_future()

    def at(name: str, delay: float):
        when = start + delay

        def callback() -> None:
            fired.append((name, when, time.monotonic()))
            if name == "last":
                done.set_result(None)

        return clock.call_at(when, callback)

    # Set out of order; one in the past; one cancelled between others.
    at("c", 0.0030)
    at("a", 0.0001)  # uvloop's own timers round this to 0 ms and fire it early
    cancelled = at("x", 0.0010)
    at("b", 0.0015)
    at("past", -0.001)
    at("last", 0.0040)
    cancelled.cancel()
    await asyncio.wait_for(done, 5)
    assert [name for name, _, _ in fired] == ["past", "a", "b", "c", "last"]
    assert all(now >= when for _, when, now in fired), fired


async def test_short_timers_fire_in_order_never_early_and_not_when_cancelled() -> None:
    await _fire_in_order()


def test_the_same_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_fire_in_order())


async def test_a_timer_set_while_an_earlier_one_is_pending_and_a_later_one_after_it_fired() -> None:
    clock = LoopClock()
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    clock.call_at(time.monotonic() + 0.002, lambda: first.set_result(time.monotonic()))
    clock.call_at(time.monotonic() + 0.001, lambda: second.set_result(time.monotonic()))
    assert await asyncio.wait_for(second, 5) <= await asyncio.wait_for(first, 5)
    third = loop.create_future()  # the timerfd re-armed after it emptied
    clock.call_at(time.monotonic() + 0.001, lambda: third.set_result(True))
    assert await asyncio.wait_for(third, 5)


async def test_long_timers_stay_on_the_loop() -> None:
    clock = LoopClock()
    handle = clock.call_at(time.monotonic() + PRECISE_BELOW_S * 10, lambda: None)
    assert isinstance(handle, asyncio.TimerHandle)
    handle.cancel()


def test_a_loop_s_timerfd_goes_with_the_loop() -> None:
    import gc
    import os

    def is_timerfd(fd: int) -> bool:  # the number may be reused by another file once closed
        try:
            return "timerfd" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False

    loop = asyncio.new_event_loop()
    try:
        timers = PreciseTimers.of(loop)
        assert timers is not None
        fd = timers._fd
        assert is_timerfd(fd)
    finally:
        loop.close()
    del loop, timers
    gc.collect()
    assert not is_timerfd(fd)
