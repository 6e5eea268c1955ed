"""Load-adaptive execution: a latency-configured and a throughput-configured execution of one model.

OpenVINO's THROUGHPUT hint splits the device into streams, so a request that arrives alone runs on one
stream's share of the cores: at low load it waits longer than the device needs. The LATENCY hint gives a
lone request every core, and loses throughput under load. The gateway compiles both (on CPU, when it
chose the hint itself) and picks per dispatch, from the load it sees and from what it has measured:

- something of this model is running: the throughput execution (its streams and infer requests);
- nothing is running (the request is alone): the execution that serves a lone request best, as measured
  on the traffic itself. The latency one is favoured only when its lone inferences take at most 1 / 1.25
  of the throughput one's and finish at least 2 ms sooner: a tiny model (Triton's `simple`) gains a tenth
  of a millisecond on a request that costs about one through the transport, and would pay with the CPU its
  extra threads spend waking up (measured on `simple`, gRPC, concurrency 1: 1,785 against 862 us of
  server CPU per request). Every EXPLORE_EVERY-th lone request runs on the other execution (a probe), so
  that both stay measured as the traffic (and its input shapes) changes. Each execution's figure is the
  median of its last SAMPLES lone runs: one hiccup does not turn the choice, a changed workload does within
  a few probes. The first run of each execution is not counted: OpenVINO allocates and prepares on a
  compiled model's first inference.

A latency run counts against the model's nireq like any other: no more than nireq executions are in
flight together. The cost is a second compiled model in memory (about one more copy of the weights) and
its compile time, which the blob cache removes on restarts.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from .scheduler import Executor
from .statistics import ExecutionTimes

# How much faster, and how much sooner, a lone inference must finish on the latency execution for the
# gateway to favour it.
MIN_SOLO_SPEEDUP = 1.25
MIN_SOLO_SAVING_S = 0.002
EXPLORE_EVERY = 32  # one lone request in this many runs on the execution not in favour
SAMPLES = 3  # lone runs remembered per execution; their median is its figure


def latency_execution_pays(throughput_s: float, latency_s: float) -> bool:
    """Whether lone requests are better served by the latency execution, from their inference times."""
    faster = latency_s > 0 and throughput_s / latency_s >= MIN_SOLO_SPEEDUP
    return faster and throughput_s - latency_s >= MIN_SOLO_SAVING_S


class Execution(enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


class Role(enum.Enum):
    """Whether a run's time says what a lone request costs on its execution."""

    OVERLAPPED = "overlapped"  # others were running: the throughput streams; its time is not a sample
    LONE = "lone"  # nothing else was running: a sample of its execution's figure


Slot = tuple[Execution, Role, Any]


class LoadAdaptiveExecutor:
    """The scheduler's executor over two executions (see the module's docstring). Its capacity is the
    throughput execution's nireq, shared by both: the latency one only takes a request that finds nothing
    running, and while it runs it holds one of the nireq places."""

    def __init__(self, *, latency: Executor, throughput: Executor):
        self._executions = {Execution.LATENCY: latency, Execution.THROUGHPUT: throughput}
        self.runs = dict.fromkeys(Execution, 0)  # executions started on each, for the metrics
        self._samples = {kind: deque[float](maxlen=SAMPLES) for kind in Execution}
        self._warm: set[Execution] = set()  # executions past their first (slower) run
        self._lone = 0

    @property
    def solo_s(self) -> dict[Execution, float | None]:
        """Each execution's lone-request inference seconds (median of its last runs); None before any."""
        return {k: statistics.median(s) if s else None for k, s in self._samples.items()}

    @property
    def nireq(self) -> int:
        return self._executions[Execution.THROUGHPUT].nireq

    @property
    def idle(self) -> int:
        latency, throughput = self._executions.values()
        return max(0, throughput.idle - latency.busy)

    @property
    def busy(self) -> int:
        return sum(e.busy for e in self._executions.values())

    def favoured(self) -> Execution:
        """The execution for a lone request, from what lone requests took on each (latency until known)."""
        solo = self.solo_s
        latency_s, throughput_s = solo[Execution.LATENCY], solo[Execution.THROUGHPUT]
        if latency_s is None or throughput_s is None:
            return Execution.LATENCY
        return Execution.LATENCY if latency_execution_pays(throughput_s, latency_s) else Execution.THROUGHPUT

    def take(self) -> Slot:
        if self.busy or not self._executions[Execution.LATENCY].idle:
            return Execution.THROUGHPUT, Role.OVERLAPPED, self._executions[Execution.THROUGHPUT].take()
        self._lone += 1
        kind = self.favoured()
        # Probe the other execution until it is measured, then once every EXPLORE_EVERY lone requests.
        if self._samples[kind] and (not all(self._samples.values()) or self._lone % EXPLORE_EVERY == 0):
            kind = _other(kind)
        return kind, Role.LONE, self._executions[kind].take()

    def give_back(self, slot: Slot) -> None:
        kind, _, inner = slot
        self._executions[kind].give_back(inner)

    async def execute(
        self, slot: Slot, parts: Sequence[Sequence[np.ndarray]], pad_to: int | None
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        kind, role, inner = slot
        self.runs[kind] += 1
        outputs, times = await self._executions[kind].execute(inner, parts, pad_to)
        if kind not in self._warm:
            self._warm.add(kind)
            return outputs, times
        if role is Role.LONE:
            self._samples[kind].append(times.infer_ns / 1e9)
        return outputs, times


def _other(kind: Execution) -> Execution:
    return Execution.THROUGHPUT if kind is Execution.LATENCY else Execution.LATENCY
