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
While a higher-priority model is running, waiting, or ran within the last
`hold_s` (its closed-loop clients are between two requests for a moment), it
holds the whole device: lower levels wait, since any execution beside it, in
a stream it leaves free, still takes the cores (or the GPU's engines) its own
run needs. Aging bounds the starving: a model whose oldest request has waited
`aging_s` gets one execution next, whatever its priority, alone on the device
(what runs ends first, nothing starts beside it), and its wait for the next
turn starts again then; so a held-off model runs at least once per `aging_s`
(a whole batch, where it batches). Alone, the turn takes the least time it can
(a lone request of a load-adaptive model runs on its latency execution), and
the higher model's next request waits for it instead of sharing the cores
with it for longer.

The queue is bounded (max_queue_size): a full queue refuses at once with
RESOURCE_EXHAUSTED, or, for a caller that asks to (WhenFull.WAIT: a gRPC stream, whose
client is slowed down by the stream's own flow control instead), waits for room.
A request whose deadline passes while it waits is dropped
before inference (DEADLINE_EXCEEDED); one whose client goes away is dropped too.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import numpy as np

from gateway.core.errors import DeadlineExceeded, GatewayError, InternalError, ResourceExhausted
from gateway.memory.budget import RequestMemoryBudget
from gateway.observability.statistics import ExecutionTimes
from gateway.scheduling.clock import Clock, LoopClock, Timer

log = logging.getLogger(__name__)

DEFAULT_PRIORITY_KEY = 1 << 62  # requests without a priority come after every explicit level
QUEUE_FACTOR = 16  # default max_queue_size = QUEUE_FACTOR x parallelism, at least MIN_QUEUE
MIN_QUEUE = 64


def default_queue_size(nireq: int, max_batch_size: int) -> int:
    return max(MIN_QUEUE, QUEUE_FACTOR * nireq * max(1, max_batch_size))


class Executor(Protocol):
    """What the scheduler needs from an executor (runtime.executor.InferExecutor; a fake in unit tests):
    a pool of slots, each of which runs one execution at a time."""

    @property
    def nireq(self) -> int: ...  # slots in all

    @property
    def idle(self) -> int: ...

    @property
    def busy(self) -> int: ...

    def take(self) -> Any: ...

    def give_back(self, slot: Any) -> None: ...

    async def execute(
        self,
        slot: Any,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]: ...


class LoopExecutor(Executor, Protocol):
    """An executor some of whose slots run on the calling thread (scheduling.adaptive's inline execution):
    for those, the scheduler calls run_on_loop at once instead of awaiting execute in a task of its own."""

    def runs_on_loop(self, slot: Any) -> bool: ...

    def run_on_loop(
        self,
        slot: Any,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]: ...


class WhenFull(enum.Enum):
    """What submit() does when the queue is full."""

    REFUSE = "refuse"  # RESOURCE_EXHAUSTED at once: unary clients, who may retry elsewhere
    WAIT = "wait"  # wait for room (a stream's requests: its reader stops reading meanwhile)


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    max_batch_size: int
    max_queue_delay_s: float = 0.0
    preferred: tuple[int, ...] = ()
    pad_to: int | None = None  # a static-batch model runs every batch at this size


@dataclass(eq=False, slots=True)
class _Waiting:
    arrays: Sequence[np.ndarray]
    rows: int  # the request's batch size (dimension 0 of every input), 1 when the model does not batch
    key: tuple  # the non-batch dimensions: only requests with equal keys share a batch
    order: tuple[int, int]  # (priority key, arrival sequence)
    arrived: float  # clock time
    deadline: float | None  # clock time
    future: asyncio.Future
    timer: Timer | None = None
    into: Mapping[int, memoryview] | None = None  # output index -> where the client wants it (one request)


# What the scheduler hands back to the waiting request: its outputs (views into the batch's
# outputs), the execution's times, and its own queue time.
Result = tuple[list[np.ndarray], ExecutionTimes, int]

# Called once per execution: (rows, times, queue time in ns of each request in it).
ExecutionRecorder = Callable[[int, ExecutionTimes, list[int]], None]


class ModelScheduler:
    """One model version's queue in front of its executor (see the module's docstring)."""

    def __init__(
        self,
        *,
        executor: Executor,
        label: str,
        max_queue_size: int,
        batching: BatchingPolicy | None = None,
        priority: int = 2,
        streams: int = 1,
        gate: DeviceGate | None = None,
        on_execution: ExecutionRecorder | None = None,
        clock: Clock | None = None,
        memory: RequestMemoryBudget | None = None,
    ):
        """`memory`: the request memory budget, charged with the copy a batch of several requests makes
        of their inputs while it runs."""
        self.executor = executor
        self._memory = memory
        self.label = label  # "model 'x' version N", for messages
        self.max_queue_size = max_queue_size  # 0 = unbounded
        self.batching = batching
        self._pad_to = batching.pad_to if batching else None
        self.priority = priority  # the model's level on its device (1 = highest)
        self.streams = streams  # how many executions the device runs side by side
        self._gate = gate
        self._on_execution = on_execution
        self._clock = clock or LoopClock()
        self._waiting: list[_Waiting] = []
        self._sequence = 0
        self._delay_timer: Timer | None = None
        self._room_waiters: list[asyncio.Future] = []  # callers waiting for a full queue to have room
        self._loop = asyncio.get_running_loop()
        # pump() runs at once the slots of an executor that runs some on the loop (LoopExecutor)
        self._on_loop = cast(LoopExecutor, executor) if hasattr(executor, "run_on_loop") else None
        if gate is not None:
            gate.register(self)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def oldest_arrival(self) -> float | None:
        return min((w.arrived for w in self._waiting), default=None)

    def wants_slot(self) -> bool:
        return bool(self._waiting) and self.executor.idle > 0

    def close(self) -> None:
        """Leave the device gate; what is queued or running still completes."""
        if self._gate is not None:
            self._gate.unregister(self)

    def has_room(self) -> bool:
        return not self.max_queue_size or len(self._waiting) < self.max_queue_size

    async def wait_for_room(self, deadline: float | None = None) -> None:
        """Return once the queue can take a request (at once when it can now); DeadlineExceeded when
        `deadline` (clock time) passes first."""
        while not self.has_room():
            waiter = self._loop.create_future()
            self._room_waiters.append(waiter)
            timer = None
            if deadline is not None:
                timer = self._clock.call_at(deadline, functools.partial(_expire_waiter, waiter, self.label))
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

    def _notify_room(self) -> None:
        # Wake as many waiters as there are free places; each re-checks (another may have taken one).
        free = self.max_queue_size - len(self._waiting) if self.max_queue_size else len(self._room_waiters)
        while free > 0 and self._room_waiters:
            waiter = self._room_waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    async def submit(
        self,
        arrays: Sequence[np.ndarray],
        rows: int,
        priority: int = 0,
        deadline: float | None = None,
        when_full: WhenFull = WhenFull.REFUSE,
        into: Mapping[int, memoryview] | None = None,
    ) -> Result:
        """Queue one request's inputs (model input order) and wait for its outputs. `into`: output index ->
        memory the client wants it in, used when the request runs alone (a batch's outputs are one array).

        Invariant (ModelVersion validated it before this call): when batching is on, every array has
        dimension 0 equal to `rows`, 1 <= rows <= max_batch_size. The batching key, the row counts, the
        padding and the split of the outputs below rely on it."""
        if not self.has_room():
            if when_full is WhenFull.REFUSE:
                raise ResourceExhausted(
                    f"{self.label}: the queue is full ({self.max_queue_size} requests waiting); retry later"
                )
            await self.wait_for_room(deadline)
        key = tuple(a.shape[1:] for a in arrays) if self.batching else ()
        self._sequence += 1
        waiting = _Waiting(
            arrays,
            rows,
            key,
            (priority or DEFAULT_PRIORITY_KEY, self._sequence),
            self._clock.now(),
            deadline,
            self._loop.create_future(),
            into=into,
        )
        bisect.insort(self._waiting, waiting, key=lambda w: w.order)
        if deadline is not None:
            waiting.timer = self._clock.call_at(deadline, lambda: self._expire(waiting))
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
            if self._room_waiters:
                self._notify_room()
            return True
        return False

    def _expire(self, waiting: _Waiting) -> None:
        if self._withdraw(waiting) and not waiting.future.done():
            waiting.future.set_exception(
                DeadlineExceeded(f"{self.label}: the request's deadline expired while it was queued")
            )

    # --- dispatch ------------------------------------------------------------------------------

    def pump(self) -> None:
        """Dispatch what can run now: called on arrival, on completion, on timers and by the gate. A slot
        that runs on the loop runs here and now: a tiny model's requests then cost no task each, and the
        answers of the requests that one read brought in leave together. Each such run ends without
        pumping: this loop goes on to the next (a queue of any length, and no recursion)."""
        while self._waiting and self.executor.idle > 0:
            now = self._clock.now()
            head = self._waiting[0]
            if head.deadline is not None and head.deadline <= now:
                self._expire(head)
                continue
            group = self._form_batch(head, now)
            if group is None:  # wait for the batch to fill; the delay timer calls back
                return
            ticket = self._gate.try_acquire(self) if self._gate is not None else Ticket.UNCOUNTED
            if ticket is Ticket.REFUSED:
                return  # the gate calls pump() when this model's turn comes
            for waiting in group:
                self._withdraw(waiting)
            queue_ns = [int((now - w.arrived) * 1e9) for w in group]
            slot = self.executor.take()
            if self._on_loop is not None and self._on_loop.runs_on_loop(slot):
                self._run_on_loop(self._on_loop, slot, group, queue_ns, ticket)
            else:
                self._loop.create_task(self._execute(slot, group, queue_ns, ticket))

    def _form_batch(self, head: _Waiting, now: float) -> list[_Waiting] | None:
        policy = self.batching
        if policy is None:
            return [head]
        group: list[_Waiting] = []
        rows, preferred_prefix = 0, 0
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
        due = head.arrived + policy.max_queue_delay_s  # the timer's own time: no float drift between them
        if now >= due:
            return group
        if self._delay_timer is None:
            self._delay_timer = self._clock.call_at(due, self._delay_elapsed)
        return None

    def _delay_elapsed(self) -> None:
        self._delay_timer = None
        self.pump()

    async def _execute(self, slot: Any, group: list[_Waiting], queue_ns: list[int], ticket: Ticket) -> None:
        batch_copy = self._charge_batch(group)
        try:
            outputs, times = await self.executor.execute(slot, *self._parts(group))
        except Exception as e:
            self._fail(group, e)
        else:
            self._deliver(group, outputs, times, queue_ns)
        finally:
            self._release(slot, ticket, batch_copy)
            self.pump()

    def _run_on_loop(
        self, executor: LoopExecutor, slot: Any, group: list[_Waiting], queue_ns: list[int], ticket: Ticket
    ) -> None:
        """_execute on the loop, within pump (which goes on dispatching after it)."""
        batch_copy = self._charge_batch(group)
        try:
            outputs, times = executor.run_on_loop(slot, *self._parts(group))
        except Exception as e:
            self._fail(group, e)
        else:
            self._deliver(group, outputs, times, queue_ns)
        finally:
            self._release(slot, ticket, batch_copy)

    def _runs_alone(self, group: list[_Waiting]) -> bool:
        """Whether a group's one request runs as it is: no batch array stacked or padded for it, its
        outputs its own, and written where the client wants them."""
        return len(group) == 1 and self._pad_to is None

    def _parts(self, group: list[_Waiting]) -> tuple[list, int | None, Mapping[int, memoryview] | None]:
        """The executor's arguments for a group: its inputs, the padding, and where its outputs go."""
        into = group[0].into if self._runs_alone(group) else None
        return [w.arrays for w in group], self._pad_to, into

    def _charge_batch(self, group: list[_Waiting]) -> Any:
        """The batch array the executor stacks several requests' inputs into, charged to the memory budget
        while it runs (None when nothing is copied)."""
        if self._memory is None or self._runs_alone(group):
            return None
        batch_copy = self._memory.charge()
        batch_copy.add(sum(a.nbytes for w in group for a in w.arrays))
        return batch_copy

    def _fail(self, group: list[_Waiting], e: Exception) -> None:
        # Only the requests of this batch fail; the next batch runs on the same executor.
        if isinstance(e, GatewayError):
            error = e  # the executor's InternalError keeps OpenVINO's exception as its cause
        else:
            error = InternalError(f"inference failed: {type(e).__name__}: {e}")
            error.__cause__ = e
        log.error(
            "%s: inference failed on a batch of %d row(s) from %d request(s): %s",
            self.label,
            sum(w.rows for w in group),
            len(group),
            error.message,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        for waiting in group:
            if not waiting.future.done():
                waiting.future.set_exception(error)

    def _deliver(
        self, group: list[_Waiting], outputs: list[np.ndarray], times: ExecutionTimes, queue_ns: list[int]
    ) -> None:
        if self._on_execution is not None:
            self._on_execution(sum(w.rows for w in group), times, queue_ns)
        alone = self._runs_alone(group)
        offset = 0
        for waiting, queued in zip(group, queue_ns, strict=True):
            if alone:
                mine = outputs
            else:  # views into the batch's outputs: no second copy
                mine = [o[offset : offset + waiting.rows] for o in outputs]
            offset += waiting.rows
            if not waiting.future.done():  # a client that left has a cancelled future
                waiting.future.set_result((mine, times, queued))

    def _release(self, slot: Any, ticket: Ticket, batch_copy: Any) -> None:
        if batch_copy is not None:
            batch_copy.release()
        self.executor.give_back(slot)
        if ticket is not Ticket.UNCOUNTED and self._gate is not None:
            self._gate.release(self, ticket)


class Ticket(enum.Enum):
    """What DeviceGate.try_acquire answers."""

    REFUSED = "refused"  # wait: the gate calls pump() again when this model may go
    UNCOUNTED = "uncounted"  # go; the gate is not counting (one priority on the device)
    COUNTED = "counted"  # go, and release() the slot when the execution ends
    ALONE = "alone"  # go by aging, alone on the device: nothing starts until release()


def _expire_waiter(waiter: asyncio.Future, label: str) -> None:
    if not waiter.done():
        waiter.set_exception(
            DeadlineExceeded(f"{label}: the request's deadline expired while it waited for room in the queue")
        )


class _Rank(NamedTuple):
    """A waiting model's place in the device gate's line; lower ranks first: aged turns before everyone,
    then by priority level (1 = highest), then by the arrival of the oldest queued request."""

    not_aged: bool
    level: int  # 0 for an aged turn: its priority no longer matters
    oldest_arrival: float


class DeviceGate:
    """Orders dispatch among the models of one device by model priority (see the module's docstring)."""

    def __init__(
        self, *, device: str, aging_s: float = 0.5, hold_s: float = 0.02, clock: Clock | None = None
    ):
        self.device = device
        self.aging_s = aging_s
        self.hold_s = hold_s
        self._clock = clock or LoopClock()
        self._members: list[ModelScheduler] = []
        self._waiting: list[ModelScheduler] = []
        self._in_use: dict[int, int] = {}  # priority level -> running executions
        self._last_used: dict[int, float] = {}  # level -> clock time it last took or released a slot
        self._last_turn: dict[ModelScheduler, float] = {}  # model -> when it last went ahead by aging
        self._alone = False  # an execution that went by aging is running: nothing else starts
        self._wake_timer: Timer | None = None
        self._wake_due = 0.0
        self.capacity = 1
        self.active = False

    def register(self, scheduler: ModelScheduler) -> None:
        self._members.append(scheduler)
        self._refresh()

    def unregister(self, scheduler: ModelScheduler) -> None:
        if scheduler in self._members:
            self._members.remove(scheduler)
        if scheduler in self._waiting:
            self._waiting.remove(scheduler)
        self._last_turn.pop(scheduler, None)
        self._refresh()
        self._wake()

    def _refresh(self) -> None:
        # With one priority level on the device each model is bounded by its own infer requests:
        # the gate stands aside and costs nothing.
        self.active = len({m.priority for m in self._members}) > 1
        self.capacity = max((m.streams for m in self._members), default=1)

    def _ages_at(self, scheduler: ModelScheduler) -> float | None:
        """When the model's turn by aging comes: its oldest request has waited aging_s, counted from its
        last turn at the earliest (None: nothing queued)."""
        oldest = scheduler.oldest_arrival()
        if oldest is None:
            return None
        return max(oldest, self._last_turn.get(scheduler, -math.inf)) + self.aging_s

    def _aged(self, scheduler: ModelScheduler, now: float) -> bool:
        due = self._ages_at(scheduler)
        return due is not None and now >= due  # the wake timer's own time

    def _rank(self, scheduler: ModelScheduler, now: float) -> _Rank:
        aged = self._aged(scheduler, now)
        oldest = scheduler.oldest_arrival()
        return _Rank(not aged, scheduler.priority if not aged else 0, now if oldest is None else oldest)

    def try_acquire(self, scheduler: ModelScheduler) -> Ticket:
        if not self.active:
            return Ticket.UNCOUNTED
        now = self._clock.now()
        running = sum(self._in_use.values())
        mine = self._rank(scheduler, now)
        aged = not mine.not_aged
        # An aged turn waits for the device to empty (those behind it in rank wait with it: see below).
        allowed = not self._alone and (running == 0 if aged else running < self.capacity)
        if allowed:
            # Someone ahead in line (aged, or of a higher priority) takes the slot first.
            for other in self._waiting:
                if other is not scheduler and other.wants_slot() and self._rank(other, now) < mine:
                    allowed = False
                    break
        if allowed and not aged:  # a higher level running or within its hold has the whole device
            lapses: list[float] = []  # when idle higher levels' holds end (a busy level wakes us on release)
            for level, last_used in self._last_used.items():
                if level >= scheduler.priority:
                    continue
                held_until = last_used + self.hold_s
                if self._in_use.get(level, 0):
                    allowed = False
                elif now < held_until:
                    allowed = False
                    lapses.append(held_until)
            if not allowed and lapses:
                self._schedule_wake(min(lapses))
        if not allowed:
            if scheduler not in self._waiting:
                self._waiting.append(scheduler)
            # Wake when its turn by aging comes; once aged, only a release can free a slot for it (a timer
            # then would fire at once, every loop iteration, until one does).
            due = self._ages_at(scheduler)
            if due is not None and now < due:
                self._schedule_wake(due)
            return Ticket.REFUSED
        if scheduler in self._waiting:
            self._waiting.remove(scheduler)
        level = scheduler.priority
        self._in_use[level] = self._in_use.get(level, 0) + 1
        self._last_used[level] = max(self._last_used.get(level, -math.inf), now)
        if aged:
            self._last_turn[scheduler] = now
            self._alone = True
            return Ticket.ALONE
        return Ticket.COUNTED

    def release(self, scheduler: ModelScheduler, ticket: Ticket = Ticket.COUNTED) -> None:
        if ticket is Ticket.ALONE:
            self._alone = False
        level = scheduler.priority
        if self._in_use.get(level, 0) > 0:
            self._in_use[level] -= 1
        self._last_used[level] = self._clock.now()
        self._wake()

    def _schedule_wake(self, due: float) -> None:
        if self._wake_timer is not None:
            if self._wake_due <= due:
                return
            self._wake_timer.cancel()
        self._wake_due = due
        self._wake_timer = self._clock.call_at(due, self._timer_wake)

    def _timer_wake(self) -> None:
        self._wake_timer = None
        self._wake()

    def _wake(self) -> None:
        now = self._clock.now()
        for scheduler in sorted(self._waiting, key=lambda s: self._rank(s, now)):
            if scheduler not in self._waiting:
                continue
            if not scheduler.wants_slot():
                self._waiting.remove(scheduler)
                continue
            scheduler.pump()
            if scheduler in self._waiting:  # refused: those behind it wait too
                break
