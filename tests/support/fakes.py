"""Fake neighbours for unit tests: a manual clock and an executor whose executions the test finishes."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.observability.statistics import ExecutionTimes


class _ManualTimer:
    def __init__(self, when: float, callback: Callable[[], None]):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when the test says so; timers fire in time order during advance()."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = target

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._timers if not t.cancelled)


@dataclass(eq=False)
class FakeRun:
    """One execution the scheduler started: its parts (each a request's arrays) and pad size."""

    slot: int
    parts: Sequence[Sequence[np.ndarray]]
    pad_to: int | None
    future: asyncio.Future = field(repr=False)
    into: Mapping[int, memoryview] | None = None

    @property
    def rows(self) -> list[int]:
        return [p[0].shape[0] if p[0].ndim else 1 for p in self.parts]

    def finish(self, infer_ns: int = 2) -> None:
        """Complete with outputs = 10 x the first input, stacked along dimension 0 (and padded), and an
        inference time of `infer_ns`."""
        if len(self.parts) == 1 and self.pad_to is None:
            stacked = np.asarray(self.parts[0][0])
        else:
            stacked = np.concatenate([p[0] for p in self.parts])
            if self.pad_to is not None and stacked.shape[0] < self.pad_to:
                padding = np.full((self.pad_to - stacked.shape[0], *stacked.shape[1:]), -1, stacked.dtype)
                stacked = np.concatenate([stacked, padding])
        self.future.set_result(([stacked * 10], ExecutionTimes(input_ns=1, infer_ns=infer_ns, output_ns=3)))

    def fail(self, error: Exception) -> None:
        self.future.set_exception(error)


class FakeExecutor:
    """The scheduler's executor with `nireq` slots; each execute() waits until the test finishes it."""

    def __init__(self, nireq: int = 1):
        self.nireq = nireq
        self._idle = list(range(nireq))
        self.runs: list[FakeRun] = []

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return self.nireq - len(self._idle)

    def take(self) -> int:
        return self._idle.pop()

    def give_back(self, slot: int) -> None:
        self._idle.append(slot)

    async def execute(self, slot, parts, pad_to, into=None):
        run = FakeRun(slot, parts, pad_to, asyncio.get_running_loop().create_future(), into)
        self.runs.append(run)
        return await run.future

    @property
    def running(self) -> list[FakeRun]:
        return [r for r in self.runs if not r.future.done()]


async def settle(rounds: int = 10) -> None:
    """Let every ready task and callback on the loop run (no time passes on any clock)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeInlineExecutor(FakeExecutor):
    """An executor that runs inline (adaptive.InlineExecutor): run_inline answers at once with 10 x the first
    input and an inference time of `infer_ns`, which the test may change between requests."""

    def __init__(self, infer_ns: int = 50_000):
        super().__init__(1)
        self.infer_ns = infer_ns  # the run's CPU time on the calling thread
        self.preempted_ns = 0  # added to its wall time: other processes held the core meanwhile
        self.inline_runs = 0

    def run_inline(self, slot, parts, pad_to, into=None):
        self.inline_runs += 1
        times = ExecutionTimes(
            input_ns=1, infer_ns=self.infer_ns + self.preempted_ns, output_ns=3, infer_cpu_ns=self.infer_ns
        )
        return [np.asarray(parts[0][0]) * 10], times


class FakeLoopExecutor(FakeExecutor):
    """An executor whose slots all run on the loop (scheduler.LoopExecutor): run_on_loop answers at once
    with 10 x the first input, or raises `fail_with` once if the test sets it."""

    def __init__(self, nireq: int = 1):
        super().__init__(nireq)
        self.loop_runs: list[float] = []  # each run's first input value, in the order they ran
        self.fail_with: Exception | None = None

    def runs_on_loop(self, slot) -> bool:
        return True

    def run_on_loop(self, slot, parts, pad_to, into=None):
        self.loop_runs.append(float(np.asarray(parts[0][0]).flat[0]))
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return [np.asarray(parts[0][0]) * 10], ExecutionTimes(input_ns=1, infer_ns=2, output_ns=3)
