"""Load-adaptive execution: a latency-configured and a throughput-configured execution of one model.

OpenVINO's THROUGHPUT hint splits the device into streams, so a request that arrives alone runs on one
stream's share of the cores: at low load it waits longer than the device needs. The LATENCY hint gives a
lone request every core, and loses throughput under load. The gateway compiles both (on CPU, when it
chose the hint itself) and picks per dispatch, from the load it sees and from what it has measured:

- something of this model is running: the throughput execution (its streams and infer requests);
- nothing is running (the request is alone): the execution that serves a lone request best, as measured
  on the traffic itself. The latency one is favoured only when its lone inferences take at most 1 / 1.25
  of the throughput one's and finish at least 0.5 ms sooner: a tiny model (Triton's `simple`) gains a
  tenth of a millisecond on a request that costs about one through the transport, and would pay with the
  CPU its extra threads spend waking up (measured on `simple`, gRPC, concurrency 1: 1,785 against 862 us
  of server CPU per request; such a model runs inline anyway, below). The bound was 2 ms before inline
  execution existed, and it kept a model of a few milliseconds on one stream: `make bench`'s
  super-resolution model (1.3-1.9 ms alone on the latency execution, 2.4-2.9 on a stream) answered one
  closed-loop client (c=1, 3 alternating pairs, medians) over gRPC in a p50 of 5.48 ms with it and 3.43 ms
  with 0.5 ms, at about the same server CPU per request (4.66 and 4.79 ms), and over REST in 4.27 and
  2.87 ms (CPU 3.73 and 4.48 ms: the second core's thread is paid for). Every EXPLORE_EVERY-th lone
  request runs on one of the others (a probe), so
  that all stay measured as the traffic (and its input shapes) changes. Each execution's figure is the
  quickest of its last SAMPLES lone runs: noise on a shared machine only ever slows a run down (a thread
  preempted), so slow runs do not turn the choice unless all of the last SAMPLES were slow. A changed
  workload makes them so within SAMPLES runs of the favoured execution (consecutive requests), and a
  quicker one shows at the first probe. With the median of 3 instead, two slow runs of three turned it: on
  the ResNet-50-shaped model at concurrency 1, 4-28 % (REST) and 0-16 % (gRPC) of lone requests went to
  the throughput execution outside the probes, against 0-0.3 % and 0-3 % with the quickest of 3 (3
  alternating runs each; 38.2 -> 42.9 and 37.9 -> 41.9 requests/s). Slowness lasts longer than three
  20 ms runs at times, though: over REST, 4 windows of 3 s, the quickest of 3 still turned twice (50
  lone requests on the streams outside the probes, each 40 ms instead of 20), the quickest of 8 never.
  A run that another request started beside is no sample (it measures sharing the cores), nor is the
  first run of each execution (OpenVINO allocates and prepares on a compiled model's first inference).
- a tiny model: inline. Handing a request to OpenVINO's threads and taking the callback back (a thread
  woken each way, the GIL taken by the callback, the loop woken) costs more than a tiny model's
  inference. When the latency execution's lone runs take at most INLINE_CANDIDATE_S (hand-over included),
  the gateway compiles a third execution in the background, LATENCY hint on one thread, and from then on
  runs a request's inference on the event loop itself with OpenVINO's synchronous infer(), while its runs
  there stay within INLINE_BELOW_S (the loop is blocked that long; probed like the others when they do
  not; while they do, the threaded executions are not probed: that figure alone decides). A lone request
  runs there, and so does one that overlaps others while the inline execution is free (the others run on
  the streams): every inline run is a sample, since its time is what the loop
  waits, whatever runs beside it. One thread because the LATENCY execution's worker threads spin after
  each inference: on `simple` at concurrency 1 inline on it cost 1,238 us of server CPU per request (669
  of them one spinning worker) against 799 through the hand-over; on one thread a synchronous inference
  costs 111 us of CPU (with the LATENCY hint's threads 791) in the same loop. Overlapping requests inline
  too, `simple`, medians of 4 runs alternating with the commit before (a noisy machine: single pairs went
  both ways): server CPU per request at concurrency 4 over REST 480 -> 414 us, over gRPC 639 -> 581 us,
  at 16 over gRPC 667 -> 625 us.

A latency run counts against the model's nireq like any other: no more than nireq executions are in
flight together (an inline one is over before the loop takes the next request). The cost is a second
compiled model in memory (about one more copy of the weights) and its compile time, which the blob cache
removes on restarts; a model that runs inline has a third, and only tiny models do.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
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
    (openvino_runtime.InferExecutor.run_inline)."""

    def run_inline(
        self, slot: Any, parts: Sequence[Sequence[np.ndarray]], pad_to: int | None
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
        self._lone = 0
        # Whether a request started beside the lone run in flight (there is at most one: a lone run
        # starts only when nothing runs). Its time then says what sharing the cores costs, not what a
        # lone request does: the first request of each closed-loop c=8 window (the other 7 arriving
        # during it) took 41 ms on the latency execution against 21 ms alone, and three such windows
        # turned the choice for the c=1 load after them (ResNet-50-shaped, REST).
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
            if inline is not None and inline.idle and self.favoured() is Execution.INLINE:
                return Execution.INLINE, Role.OVERLAPPED, inline.take()
            return Execution.THROUGHPUT, Role.OVERLAPPED, self._executions[Execution.THROUGHPUT].take()
        self._lone += 1
        self._lone_shared = False
        kind = self._lone_execution()
        executor = self._inline if kind is Execution.INLINE else self._executions[kind]
        assert executor is not None  # INLINE is a candidate only once it exists
        return kind, Role.LONE, executor.take()

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
        # hand-over plus the spinning of the stream thread it wakes. `simple` over gRPC, 3 alternating
        # pairs each: OpenVINO's threads' CPU per request 87-94 -> 70-73 us at c=1, 72-84 -> 65-77 at c=4;
        # the server's total moved within this machine's noise (+-30 us). Once inline loses favour, the
        # probes resume and refresh the others' figures.
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
        self, slot: Slot, parts: Sequence[Sequence[np.ndarray]], pad_to: int | None
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        kind, role, inner = slot
        self.runs[kind] += 1
        if kind is Execution.INLINE:
            assert self._inline is not None
            outputs, times = self._inline.run_inline(inner, parts, pad_to)
        else:
            outputs, times = await self._executions[kind].execute(inner, parts, pad_to)
        if kind not in self._warm:
            self._warm.add(kind)
            return outputs, times
        if kind is Execution.INLINE or (role is Role.LONE and not self._lone_shared):
            self._sampled(kind, times.infer_ns / 1e9)
            self._consider_inline()
        return outputs, times

    def _sampled(self, kind: Execution, seconds: float) -> None:
        samples = self._samples[kind]
        samples.append(seconds)
        self._solo[kind] = min(samples)
        self._refresh_favour()

    def _consider_inline(self) -> None:
        if self._compile_inline is None or self.inline_state is not InlineState.NOT_WANTED:
            return
        # Only once both threaded executions are measured: the compilation's CPU would skew the samples.
        latency_s, throughput_s = self._solo[Execution.LATENCY], self._solo[Execution.THROUGHPUT]
        if latency_s is not None and throughput_s is not None and latency_s <= INLINE_CANDIDATE_S:
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
