"""Load-adaptive execution: a latency-configured and a throughput-configured execution of one model.

OpenVINO's THROUGHPUT hint splits the device into streams, so a lone request runs on one stream's share of
the cores; the LATENCY hint gives it every core and loses throughput under load. The gateway compiles both
(on CPU, when it chose the hint itself) and picks per dispatch:

- something of this model is running: the throughput execution (its streams and infer requests);
- nothing is running: the execution that serves a lone request best, measured on the traffic. The
  latency one is favoured only while its lone runs take at most 1 / MIN_SOLO_SPEEDUP of the throughput
  one's and finish MIN_SOLO_SAVING_S sooner. Each execution's figure is the quickest of its last SAMPLES
  lone runs (noise only slows a run down); a run that another request started beside is no sample, nor is
  an execution's first run; every EXPLORE_EVERY-th lone request probes another execution;
- a tiny model runs inline: when the latency execution's lone runs take at most INLINE_CANDIDATE_S, or
  so does a throughput run that shared the cores (a model under load from its first request has no lone
  runs, and sharing only slows a run), a third execution (LATENCY hint, one thread) is compiled in the
  background and inferences run on the event loop with OpenVINO's synchronous infer(), while they stay
  within INLINE_BELOW_S. Its first two runs (a warm-up and a measured one) go to it whenever it is idle,
  overlapping requests included, so that it is measured under load too.

Every execution counts against the model's nireq. The thresholds and the measurements behind them:
docs/design/adaptive-execution.md.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from gateway.observability.statistics import ExecutionTimes
from gateway.scheduling.scheduler import Executor

# How much faster, and how much sooner, a lone inference must finish on the latency execution for the
# gateway to favour it.
MIN_SOLO_SPEEDUP = 1.25
MIN_SOLO_SAVING_S = 0.0005
EXPLORE_EVERY = 32  # one lone request in this many runs on an execution not in favour (a probe)
SAMPLES = 8  # lone runs remembered per execution; the quickest is its figure
# Lone runs on the latency execution this quick (its hand-over to OpenVINO's threads included) make a
# model a candidate for inline execution; inline, its lone runs must stay this quick (the loop waits).
INLINE_CANDIDATE_S = 0.0005
INLINE_BELOW_S = 0.0002

log = logging.getLogger("ovgw")


def latency_execution_pays(throughput_s: float, latency_s: float) -> bool:
    """Whether lone requests are better served by the latency execution, from their inference times."""
    faster = latency_s > 0 and throughput_s / latency_s >= MIN_SOLO_SPEEDUP
    return faster and throughput_s - latency_s >= MIN_SOLO_SAVING_S


class Execution(enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"
    INLINE = "inline"  # on the event loop, LATENCY hint on one thread: tiny models alone

    # Members are singletons compared by identity, so identity hashing is consistent; Enum's own
    # __hash__ is Python code (hash of the name), and a request looks up dicts keyed by this a dozen
    # times: 9 % of the scheduler's time in a loop of inline requests (cProfile).
    __hash__ = object.__hash__


class Role(enum.Enum):
    """Whether a run's time says what a lone request costs on its execution."""

    OVERLAPPED = "overlapped"  # others were running: the streams (or inline); not a sample, unless inline
    LONE = "lone"  # nothing else was running when it started: a sample, unless another starts beside it


Slot = tuple[Execution, Role, Any]


class InlineExecutor(Executor, Protocol):
    """An executor that also runs one request's inference on the calling thread
    (runtime.executor.InferExecutor.run_inline)."""

    def run_inline(
        self,
        slot: Any,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]: ...


class InlineState(enum.Enum):
    NOT_WANTED = "not wanted"  # no compile_inline given, or the model is not quick enough (yet)
    COMPILING = "compiling"
    READY = "ready"
    FAILED = "failed"  # its compilation failed: never tried again for this version


class LoadAdaptiveExecutor:
    """The scheduler's executor over two executions, three for a tiny model (see the module's docstring).
    Its capacity is the throughput execution's nireq, shared by all: the latency one only takes a request
    that finds nothing running, the inline one also one that overlaps others, and while either runs it
    holds one of the nireq places.

    `compile_inline`: makes the inline execution (called once, the first time the latency execution's
    lone runs are quick enough); None: never inline."""

    def __init__(
        self,
        *,
        latency: Executor,
        throughput: Executor,
        compile_inline: Callable[[], Awaitable[InlineExecutor]] | None = None,
    ):
        self._executions: dict[Execution, Executor] = {
            Execution.LATENCY: latency,
            Execution.THROUGHPUT: throughput,
        }
        self._inline: InlineExecutor | None = None
        self._compile_inline = compile_inline
        self.inline_state = InlineState.NOT_WANTED
        self._compiling: asyncio.Task | None = None  # held so that the task is not collected
        self.runs = dict.fromkeys(Execution, 0)  # executions started on each, for the metrics
        self._samples = {kind: deque[float](maxlen=SAMPLES) for kind in Execution}
        # Derived from the samples and the executions, kept up to date where those change (_sampled,
        # _make_inline), since every dispatch reads them: the quickest of each one's samples, the
        # execution favoured for a lone request, and those that take only lone requests.
        self._solo: dict[Execution, float | None] = dict.fromkeys(Execution)
        self._favoured = Execution.LATENCY
        self._lone_executors: tuple[Executor, ...] = (latency,)
        self._warm: set[Execution] = set()  # executions past their first (slower) run
        # The quickest throughput run that others overlapped: no lone run is slower, so it can make a model
        # an inline candidate where there are no lone runs to measure.
        self._quickest_shared_s: float | None = None
        self._lone = 0
        # Whether a request started beside the lone run in flight (there is at most one: a lone run
        # starts only when nothing runs). Its time then says what sharing the cores costs, not what a
        # lone request does (a run joined by the rest of a closed-loop window took twice its lone time and
        # turned the choice for the load after it: docs/design/adaptive-execution.md).
        self._lone_shared = False

    @property
    def solo_s(self) -> dict[Execution, float | None]:
        """Each execution's lone-request inference seconds (the quickest of its last runs), or None."""
        return dict(self._solo)

    @property
    def nireq(self) -> int:
        return self._executions[Execution.THROUGHPUT].nireq

    def _lone_busy(self) -> int:
        """Places held by the executions that take only lone requests (a loop: one or two of them)."""
        busy = 0
        for executor in self._lone_executors:
            busy += executor.busy
        return busy

    @property
    def idle(self) -> int:
        inline = self._inline
        if inline is not None and self._favoured is Execution.INLINE:
            # An inline run takes the loop for less than a hand-over to the streams costs it: requests
            # that overlap wait their turn on the loop (docs/design/adaptive-execution.md).
            return inline.idle
        return max(0, self._executions[Execution.THROUGHPUT].idle - self._lone_busy())

    @property
    def busy(self) -> int:
        # An inline slot counts from take() until give_back(): the scheduler may take another in between.
        return self._executions[Execution.THROUGHPUT].busy + self._lone_busy()

    def favoured(self) -> Execution:
        """The execution for a lone request, from what lone requests took on each (latency until known)."""
        return self._favoured

    def _refresh_favour(self) -> None:
        solo = self._solo
        inline_s = solo[Execution.INLINE]
        latency_s, throughput_s = solo[Execution.LATENCY], solo[Execution.THROUGHPUT]
        if self._inline is not None and inline_s is not None and inline_s <= INLINE_BELOW_S:
            self._favoured = Execution.INLINE
        elif latency_s is None or throughput_s is None:
            self._favoured = Execution.LATENCY
        elif latency_execution_pays(throughput_s, latency_s):
            self._favoured = Execution.LATENCY
        else:
            self._favoured = Execution.THROUGHPUT

    def take(self) -> Slot:
        if self.busy or not self._executions[Execution.LATENCY].idle:
            self._lone_shared = True
            inline = self._inline
            if (
                inline is not None
                and inline.idle
                and (self._favoured is Execution.INLINE or self._unmeasured_inline())
            ):
                return Execution.INLINE, Role.OVERLAPPED, inline.take()
            return Execution.THROUGHPUT, Role.OVERLAPPED, self._executions[Execution.THROUGHPUT].take()
        self._lone += 1
        self._lone_shared = False
        kind = self._lone_execution()
        executor = self._inline if kind is Execution.INLINE else self._executions[kind]
        assert executor is not None  # INLINE is a candidate only once it exists
        return kind, Role.LONE, executor.take()

    def _unmeasured_inline(self) -> bool:
        """The inline execution exists and has no sample yet: its warm-up or its first measured run."""
        return self._inline is not None and not self._samples[Execution.INLINE]

    def _candidates(self) -> list[Execution]:
        kinds = [Execution.LATENCY, Execution.THROUGHPUT]
        return kinds + [Execution.INLINE] if self._inline is not None else kinds

    def _lone_execution(self) -> Execution:
        """Each execution is measured first (warmed, then sampled), in order; then the favoured one runs,
        and every EXPLORE_EVERY-th lone request one of the others in turn (a probe), so that all stay
        measured as the traffic (and its input shapes) changes."""
        candidates = self._candidates()
        for kind in candidates:
            if not self._samples[kind]:
                return kind
        favoured = self.favoured()
        # Inline is favoured on its own figure (INLINE_BELOW_S), which every inline run refreshes, not by
        # comparison: probing the threaded executions then informs no choice, and costs each probe's
        # hand-over plus the spinning of the stream thread it wakes (docs/design/adaptive-execution.md).
        # Once inline loses favour, the probes resume and refresh the others' figures.
        if favoured is Execution.INLINE or self._lone % EXPLORE_EVERY:
            return favoured
        others = [k for k in candidates if k is not favoured]
        return others[(self._lone // EXPLORE_EVERY) % len(others)]

    def give_back(self, slot: Slot) -> None:
        kind, _, inner = slot
        executor = self._inline if kind is Execution.INLINE else self._executions[kind]
        assert executor is not None
        executor.give_back(inner)

    async def execute(
        self,
        slot: Slot,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        kind, role, inner = slot
        if kind is Execution.INLINE:
            return self.run_on_loop(slot, parts, pad_to, into)
        self.runs[kind] += 1
        outputs, times = await self._executions[kind].execute(inner, parts, pad_to, into)
        self._ran(kind, role, times)
        return outputs, times

    def runs_on_loop(self, slot: Slot) -> bool:
        """Whether `slot` is the inline execution's: run_on_loop runs it (scheduler.LoopExecutor)."""
        return slot[0] is Execution.INLINE

    def run_on_loop(
        self,
        slot: Slot,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        kind, role, inner = slot
        assert kind is Execution.INLINE and self._inline is not None
        self.runs[kind] += 1
        outputs, times = self._inline.run_inline(inner, parts, pad_to, into)
        self._ran(kind, role, times)
        return outputs, times

    def _ran(self, kind: Execution, role: Role, times: ExecutionTimes) -> None:
        """What a run's times say about its execution (the samples the choice is made from)."""
        if kind not in self._warm:
            self._warm.add(kind)
            return
        if kind is Execution.INLINE or (role is Role.LONE and not self._lone_shared):
            # An inline run counts what it cost the loop, its CPU time: the wall time also counts whatever
            # else held the core meanwhile (worker processes, the client), which a hand-over to the
            # streams would not have spared the loop.
            spent_ns = times.infer_ns if times.infer_cpu_ns is None else times.infer_cpu_ns
            self._sampled(kind, spent_ns / 1e9)
            self._consider_inline()
        elif kind is Execution.THROUGHPUT and self.inline_state is InlineState.NOT_WANTED:
            shared_s = times.infer_ns / 1e9
            if self._quickest_shared_s is None or shared_s < self._quickest_shared_s:
                self._quickest_shared_s = shared_s
                self._consider_inline()

    def _sampled(self, kind: Execution, seconds: float) -> None:
        samples = self._samples[kind]
        samples.append(seconds)
        self._solo[kind] = min(samples)
        self._refresh_favour()

    def _consider_inline(self) -> None:
        if self._compile_inline is None or self.inline_state is not InlineState.NOT_WANTED:
            return
        # Lone runs decide once both threaded executions are measured (the compilation's CPU would skew the
        # samples); runs beside others, whenever one is quick enough, since no lone run is slower.
        latency_s, throughput_s = self._solo[Execution.LATENCY], self._solo[Execution.THROUGHPUT]
        alone = latency_s is not None and throughput_s is not None and latency_s <= INLINE_CANDIDATE_S
        shared = self._quickest_shared_s is not None and self._quickest_shared_s <= INLINE_CANDIDATE_S
        if alone or shared:
            self.inline_state = InlineState.COMPILING
            self._compiling = asyncio.ensure_future(self._make_inline(self._compile_inline))

    async def _make_inline(self, compile_inline: Callable[[], Awaitable[InlineExecutor]]) -> None:
        try:
            inline = await compile_inline()
        except Exception as e:  # e.g. the version's files went away meanwhile: not worth a traceback
            self.inline_state = InlineState.FAILED
            log.warning(
                "the inline (one-thread) execution could not be compiled, lone requests keep the "
                "threaded ones: %s",
                str(e).strip().splitlines()[-1] if str(e).strip() else e,
            )
            return
        self._inline = inline
        self._lone_executors = (self._executions[Execution.LATENCY], inline)
        self._refresh_favour()
        self.inline_state = InlineState.READY
