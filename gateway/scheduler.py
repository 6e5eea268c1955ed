"""Scheduling: per-model queues, dynamic batching, priorities, back-pressure and deadlines.

A request joins its model version's queue, ordered by its own priority (Triton's
schedule_policy `priority`: 1 is the highest, 0 or absent the default level,
which comes after every explicit level) and then by arrival. Whenever an infer
request of the model is idle, the head of the queue is dispatched, together
with the requests behind it that have the same non-batch dimensions when
dynamic batching is on (Triton's rules: send at once when the batch reaches
max_batch_size or a preferred size, otherwise when the oldest request has
waited max_queue_delay_microseconds).

Models that share a device also share a DeviceGate. When their priorities
differ, the gate lets at most `capacity` executions (the device's streams) run
at once and hands each free slot to the highest-priority model that is waiting.
A higher-priority model also keeps the slots it used within the last
`hold_s` reserved, so that its closed-loop clients, who are between two
requests for a moment, find them free. A request that has waited `aging_s`
is dispatched next whatever its model's priority: no model starves.

The queue is bounded (max_queue_size): a full queue refuses at once with
RESOURCE_EXHAUSTED. A request whose deadline passes while it waits is dropped
before inference (DEADLINE_EXCEEDED); one whose client goes away is dropped too.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from .errors import DeadlineExceeded, GatewayError, InternalError, ResourceExhausted
from .openvino_runtime import InferExecutor
from .statistics import ExecutionTimes

log = logging.getLogger(__name__)

DEFAULT_PRIORITY_KEY = 1 << 62  # requests without a priority come after every explicit level
QUEUE_FACTOR = 16  # default max_queue_size = QUEUE_FACTOR x parallelism, at least MIN_QUEUE
MIN_QUEUE = 64


def default_queue_size(nireq: int, max_batch_size: int) -> int:
    return max(MIN_QUEUE, QUEUE_FACTOR * nireq * max(1, max_batch_size))


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    max_batch_size: int
    max_queue_delay_ns: int = 0
    preferred: tuple[int, ...] = ()
    pad_to: int | None = None  # a static-batch model runs every batch at this size


@dataclass(eq=False, slots=True)
class _Waiting:
    arrays: Sequence[np.ndarray]
    rows: int  # the request's batch size (dimension 0), 1 when the model does not batch
    key: tuple  # the non-batch dimensions: only requests with equal keys share a batch
    order: tuple[int, int]  # (priority key, arrival sequence)
    arrived_ns: int
    deadline: float | None  # loop time
    future: asyncio.Future
    timer: asyncio.TimerHandle | None = None


# What the scheduler hands back to the waiting request: its outputs (views into the batch's
# outputs), the execution's times, and its own queue time.
Result = tuple[list[np.ndarray], ExecutionTimes, int]


@dataclass(eq=False)
class ModelScheduler:
    executor: InferExecutor
    label: str  # "model version N", for messages
    max_queue_size: int  # 0 = unbounded
    batching: BatchingPolicy | None = None
    priority: int = 2  # the model's level on its device (1 = highest)
    streams: int = 1  # OpenVINO's execution streams: how many executions the device runs side by side
    gate: DeviceGate | None = None
    # Called once per execution: (rows, times, queue time of each request in it).
    on_execution: Callable[[int, ExecutionTimes, list[int]], None] | None = None
    _waiting: list[_Waiting] = field(default_factory=list)
    _sequence: int = 0
    _running: int = 0
    _delay_timer: asyncio.TimerHandle | None = None
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def __post_init__(self) -> None:
        if self.gate is not None:
            self.gate.register(self)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def oldest_arrival_ns(self) -> int | None:
        return min((w.arrived_ns for w in self._waiting), default=None)

    def wants_slot(self) -> bool:
        return bool(self._waiting) and self.executor.idle > 0

    def close(self) -> None:
        """Leave the device gate; what is queued or running still completes."""
        if self.gate is not None:
            self.gate.unregister(self)

    async def submit(
        self, arrays: Sequence[np.ndarray], rows: int, priority: int = 0, deadline: float | None = None
    ) -> Result:
        """Queue one request's inputs (model input order) and wait for its outputs."""
        if self.max_queue_size and len(self._waiting) >= self.max_queue_size:
            raise ResourceExhausted(
                f"{self.label}: the queue is full ({self.max_queue_size} requests waiting); retry later"
            )
        key = tuple(a.shape[1:] for a in arrays) if self.batching else ()
        self._sequence += 1
        waiting = _Waiting(
            arrays,
            rows,
            key,
            (priority or DEFAULT_PRIORITY_KEY, self._sequence),
            perf_counter_ns(),
            deadline,
            self._loop.create_future(),
        )
        bisect.insort(self._waiting, waiting, key=lambda w: w.order)
        if deadline is not None:
            waiting.timer = self._loop.call_at(deadline, self._expire, waiting)
        self.pump()
        try:
            return await waiting.future
        except asyncio.CancelledError:
            self._withdraw(waiting)
            raise

    def _withdraw(self, waiting: _Waiting) -> bool:
        if waiting.timer is not None:
            waiting.timer.cancel()
        index = bisect.bisect_left(self._waiting, waiting.order, key=lambda w: w.order)
        if index < len(self._waiting) and self._waiting[index] is waiting:
            del self._waiting[index]
            return True
        return False

    def _expire(self, waiting: _Waiting) -> None:
        if self._withdraw(waiting) and not waiting.future.done():
            waiting.future.set_exception(
                DeadlineExceeded(f"{self.label}: the request's deadline expired while it was queued")
            )

    # --- dispatch ------------------------------------------------------------------------------

    def pump(self) -> None:
        """Dispatch what can run now: called on arrival, on completion, on timers and by the gate."""
        while self._waiting and self.executor.idle > 0:
            now = self._loop.time()
            head = self._waiting[0]
            if head.deadline is not None and head.deadline <= now:
                self._expire(head)
                continue
            group = self._form_batch(head)
            if group is None:  # wait for the batch to fill; the delay timer calls back
                return
            ticket = self.gate.try_acquire(self) if self.gate is not None else GRANTED
            if ticket is REFUSED:
                return  # the gate calls pump() when this model's turn comes
            for waiting in group:
                self._withdraw(waiting)
            self._running += 1
            request = self.executor.take()
            self._loop.create_task(self._execute(request, group, ticket))

    def _form_batch(self, head: _Waiting) -> list[_Waiting] | None:
        policy = self.batching
        if policy is None:
            return [head]
        group, rows, preferred_prefix = [], 0, 0
        for waiting in self._waiting:
            if waiting.key != head.key:
                continue  # other dimensions: a batch of its own, later
            if rows + waiting.rows > policy.max_batch_size:
                break
            group.append(waiting)
            rows += waiting.rows
            if rows in policy.preferred:
                preferred_prefix = len(group)
        if rows == policy.max_batch_size:
            return group
        if preferred_prefix:
            return group[:preferred_prefix]
        waited = perf_counter_ns() - head.arrived_ns
        if waited >= policy.max_queue_delay_ns:
            return group
        if self._delay_timer is None:
            self._delay_timer = self._loop.call_later(
                (policy.max_queue_delay_ns - waited) / 1e9, self._delay_elapsed
            )
        return None

    def _delay_elapsed(self) -> None:
        self._delay_timer = None
        self.pump()

    async def _execute(self, request, group: list[_Waiting], ticket: object) -> None:
        pad_to = self.batching.pad_to if self.batching else None
        try:
            outputs, times = await self.executor.execute(request, [w.arrays for w in group], pad_to)
        except Exception as e:
            error = e if isinstance(e, GatewayError) else InternalError(f"inference failed: {e}")
            if not isinstance(e, GatewayError):
                log.exception("%s: inference failed", self.label)
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
        else:
            queue_ns = [times.started_ns - w.arrived_ns for w in group]
            rows = sum(w.rows for w in group)
            if self.on_execution is not None:
                self.on_execution(rows, times, queue_ns)
            offset = 0
            for waiting, queued in zip(group, queue_ns, strict=True):
                if len(group) == 1 and pad_to is None:
                    mine = outputs
                else:  # views into the batch's outputs: no second copy
                    mine = [o[offset : offset + waiting.rows] for o in outputs]
                offset += waiting.rows
                if not waiting.future.done():  # a client that left has a cancelled future
                    waiting.future.set_result((mine, times, queued))
        finally:
            self.executor.give_back(request)
            self._running -= 1
            if ticket is COUNTED:
                self.gate.release(self)
            self.pump()


# What DeviceGate.try_acquire answers.
REFUSED = object()  # wait: the gate calls pump() again when this model may go
GRANTED = object()  # go; the gate is not counting (one priority on the device)
COUNTED = object()  # go, and release() the slot when the execution ends


class DeviceGate:
    """Orders dispatch among the models of one device by model priority (see the module's docstring)."""

    def __init__(self, device: str, aging_s: float = 0.5, hold_s: float = 0.02):
        self.device = device
        self.aging_ns = int(aging_s * 1e9)
        self.hold_s = hold_s
        self._members: list[ModelScheduler] = []
        self._waiting: list[ModelScheduler] = []
        self._in_use: dict[int, int] = {}  # priority level -> running executions
        self._peak: dict[int, int] = {}  # level -> most executions it ran at once lately
        self._last_used: dict[int, float] = {}  # level -> loop time it last released a slot
        self._wake_timer: asyncio.TimerHandle | None = None
        self._wake_due = 0.0
        self.capacity = 1
        self.active = False

    def register(self, scheduler: ModelScheduler) -> None:
        self._members.append(scheduler)
        self._refresh()

    def unregister(self, scheduler: ModelScheduler) -> None:
        if scheduler in self._members:
            self._members.remove(scheduler)
        self._refresh()
        self._wake()

    def _refresh(self) -> None:
        # With one priority level on the device each model is bounded by its own infer requests:
        # the gate stands aside and costs nothing.
        self.active = len({m.priority for m in self._members}) > 1
        self.capacity = max((m.streams for m in self._members), default=1)

    def _aged(self, scheduler: ModelScheduler, now_ns: int) -> bool:
        oldest = scheduler.oldest_arrival_ns()
        return oldest is not None and now_ns - oldest >= self.aging_ns

    def _rank(self, scheduler: ModelScheduler, now_ns: int) -> tuple:
        aged = self._aged(scheduler, now_ns)
        return (not aged, scheduler.priority if not aged else 0, scheduler.oldest_arrival_ns() or now_ns)

    def try_acquire(self, scheduler: ModelScheduler) -> object:
        if not self.active:
            return GRANTED
        loop_now = asyncio.get_running_loop().time()
        now_ns = perf_counter_ns()
        running = sum(self._in_use.values())
        mine = self._rank(scheduler, now_ns)
        allowed = running < self.capacity
        if allowed:
            # Someone ahead in line (aged, or of a higher priority) takes the slot first.
            for other in self._waiting:
                if other is not scheduler and other.wants_slot() and self._rank(other, now_ns) < mine:
                    allowed = False
                    break
        if allowed and mine[0]:  # not aged: respect the slots higher priorities keep
            reserved = 0
            for level, peak in self._peak.items():
                if level < scheduler.priority:
                    in_use = self._in_use.get(level, 0)
                    if in_use or loop_now - self._last_used.get(level, 0.0) < self.hold_s:
                        reserved += max(0, peak - in_use)
                    else:
                        self._peak[level] = 0
            if running + reserved >= self.capacity:
                allowed = False
                self._schedule_wake(self.hold_s)
        if not allowed:
            if scheduler not in self._waiting:
                self._waiting.append(scheduler)
            oldest = scheduler.oldest_arrival_ns() or now_ns
            self._schedule_wake(max(0.0, (oldest + self.aging_ns - now_ns) / 1e9))
            return REFUSED
        if scheduler in self._waiting:
            self._waiting.remove(scheduler)
        level = scheduler.priority
        self._in_use[level] = self._in_use.get(level, 0) + 1
        self._peak[level] = max(self._peak.get(level, 0), self._in_use[level])
        return COUNTED

    def release(self, scheduler: ModelScheduler) -> None:
        level = scheduler.priority
        if self._in_use.get(level, 0) > 0:
            self._in_use[level] -= 1
        self._last_used[level] = asyncio.get_running_loop().time()
        self._wake()

    def _schedule_wake(self, after_s: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + after_s
        if self._wake_timer is not None:
            if self._wake_due <= due:
                return
            self._wake_timer.cancel()
        self._wake_due = due
        self._wake_timer = loop.call_at(due, self._timer_wake)

    def _timer_wake(self) -> None:
        self._wake_timer = None
        self._wake()

    def _wake(self) -> None:
        now_ns = perf_counter_ns()
        for scheduler in sorted(self._waiting, key=lambda s: self._rank(s, now_ns)):
            if scheduler not in self._waiting:
                continue
            if not scheduler.wants_slot():
                self._waiting.remove(scheduler)
                continue
            scheduler.pump()
            if scheduler in self._waiting:  # refused: those behind it wait too
                break
