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
  that both stay measured as the traffic (and its input shapes) changes: a probe's time replaces that
  execution's figure, while runs on the favoured one are smoothed.

A latency run counts against the model's nireq like any other: no more than nireq executions are in
flight together. The cost is a second compiled model in memory (about one more copy of the weights) and
its compile time, which the blob cache removes on restarts.
"""

from __future__ import annotations

import enum
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
SMOOTHING = 0.25  # weight of the newest lone run in each execution's average


def latency_execution_pays(throughput_s: float, latency_s: float) -> bool:
    """Whether lone requests are better served by the latency execution, from their inference times."""
    faster = latency_s > 0 and throughput_s / latency_s >= MIN_SOLO_SPEEDUP
    return faster and throughput_s - latency_s >= MIN_SOLO_SAVING_S


class Execution(enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


class Role(enum.Enum):
    """Why a run went where it went, which decides what its time teaches."""

    OVERLAPPED = "overlapped"  # others were running: the throughput streams; its time says nothing
    FAVOURED = "favoured"  # alone, on the execution in favour: smoothed into its figure
    PROBE = "probe"  # alone, on the other one (or one not yet measured): replaces its figure


Slot = tuple[Execution, Role, Any]


class LoadAdaptiveExecutor:
    """The scheduler's executor over two executions (see the module's docstring). Its capacity is the
    throughput execution's nireq, shared by both: the latency one only takes a request that finds nothing
    running, and while it runs it holds one of the nireq places."""

    def __init__(self, *, latency: Executor, throughput: Executor):
        self._executions = {Execution.LATENCY: latency, Execution.THROUGHPUT: throughput}
        self.runs = dict.fromkeys(Execution, 0)  # executions started on each, for the metrics
        # Smoothed inference seconds of lone requests on each; None until one has run there.
        self.solo_s: dict[Execution, float | None] = dict.fromkeys(Execution)
        self._lone = 0

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
        latency_s, throughput_s = self.solo_s[Execution.LATENCY], self.solo_s[Execution.THROUGHPUT]
        if latency_s is None or throughput_s is None:
            return Execution.LATENCY
        return Execution.LATENCY if latency_execution_pays(throughput_s, latency_s) else Execution.THROUGHPUT

    def take(self) -> Slot:
        if self.busy or not self._executions[Execution.LATENCY].idle:
            return Execution.THROUGHPUT, Role.OVERLAPPED, self._executions[Execution.THROUGHPUT].take()
        self._lone += 1
        kind, role = self.favoured(), Role.FAVOURED
        if self.solo_s[kind] is None:
            role = Role.PROBE
        elif None in self.solo_s.values() or self._lone % EXPLORE_EVERY == 0:
            kind, role = _other(kind), Role.PROBE
        return kind, role, self._executions[kind].take()

    def give_back(self, slot: Slot) -> None:
        kind, _, inner = slot
        self._executions[kind].give_back(inner)

    async def execute(
        self, slot: Slot, parts: Sequence[Sequence[np.ndarray]], pad_to: int | None
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        kind, role, inner = slot
        self.runs[kind] += 1
        outputs, times = await self._executions[kind].execute(inner, parts, pad_to)
        seconds = times.infer_ns / 1e9
        previous = self.solo_s[kind]
        if role is Role.PROBE or (role is Role.FAVOURED and previous is None):
            self.solo_s[kind] = seconds
        elif role is Role.FAVOURED and previous is not None:
            self.solo_s[kind] = previous + SMOOTHING * (seconds - previous)
        return outputs, times


def _other(kind: Execution) -> Execution:
    return Execution.THROUGHPUT if kind is Execution.LATENCY else Execution.LATENCY
