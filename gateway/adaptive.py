"""Load-adaptive execution: a latency-configured and a throughput-configured execution of one model.

OpenVINO's THROUGHPUT hint splits the device into streams, so a request that arrives alone runs on one
stream's share of the cores: at low load it waits longer than the device needs. The LATENCY hint gives a
lone request every core, and loses throughput under load. The gateway compiles both (on CPU, when it
chose the hint itself) and picks per dispatch, from the load it sees:

- nothing of this model is running: the latency execution (one infer request, every core);
- anything is running: the throughput execution (its streams and infer requests).

The second execution is kept only where it pays: at load, one inference alone is timed on each, and the
latency execution serves only if it is at least MIN_SOLO_SPEEDUP times faster and saves at least
MIN_SOLO_SAVING_S. A tiny model (Triton's `simple`) saves a tenth of a millisecond of a request that costs
about one through the transport, and would pay for it with the CPU its extra threads spend waking up:
measured on `simple`, gRPC at concurrency 1, 1,785 against 862 us of server CPU per request.

So a closed-loop client alone is served at latency speed, and as soon as requests overlap they go to the
throughput streams; the latency execution is at most one run at a time and idles under load. A latency run
counts against the model's nireq like any other: no more than nireq executions are in flight together.
The cost is a second compiled model in memory (about one more copy of the weights) and its compile time,
which the blob cache removes on restarts.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import numpy as np

from .scheduler import Executor
from .statistics import ExecutionTimes

# How much faster, and how much sooner, one inference alone must finish on the latency execution for the
# gateway to keep it.
MIN_SOLO_SPEEDUP = 1.25
MIN_SOLO_SAVING_S = 0.002


def latency_execution_pays(throughput_s: float, latency_s: float) -> bool:
    """Whether a latency execution is worth its memory and CPU, from one inference alone on each."""
    return (
        latency_s > 0
        and throughput_s / latency_s >= MIN_SOLO_SPEEDUP
        and throughput_s - latency_s >= MIN_SOLO_SAVING_S
    )


class Execution(enum.Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


class LoadAdaptiveExecutor:
    """The scheduler's executor over two executions (see the module's docstring). Its capacity is the
    throughput execution's nireq, shared by both: the latency one only takes a request that finds nothing
    running, and while it runs it holds one of the nireq places."""

    def __init__(self, *, latency: Executor, throughput: Executor):
        self._executions = {Execution.LATENCY: latency, Execution.THROUGHPUT: throughput}
        self.runs = dict.fromkeys(Execution, 0)  # executions started on each, for the metrics

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

    def take(self) -> tuple[Execution, Any]:
        latency = self._executions[Execution.LATENCY]
        kind = Execution.LATENCY if self.busy == 0 and latency.idle else Execution.THROUGHPUT
        return kind, self._executions[kind].take()

    def give_back(self, slot: tuple[Execution, Any]) -> None:
        kind, inner = slot
        self._executions[kind].give_back(inner)

    async def execute(
        self, slot: tuple[Execution, Any], parts: Sequence[Sequence[np.ndarray]], pad_to: int | None
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        kind, inner = slot
        self.runs[kind] += 1
        return await self._executions[kind].execute(inner, parts, pad_to)
