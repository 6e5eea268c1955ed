"""The scheduler and the device gate alone: a fake executor and a manual clock, no OpenVINO, no sleeping.

Every test here runs in milliseconds and is ordered by events, not by wall-clock time.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from gateway.core.errors import DeadlineExceeded, InternalError, ResourceExhausted
from gateway.scheduling.adaptive import (
    EXPLORE_EVERY,
    INLINE_BELOW_S,
    INLINE_CANDIDATE_S,
    SAMPLES,
    Execution,
    InlineState,
    LoadAdaptiveExecutor,
    latency_execution_pays,
)
from gateway.scheduling.scheduler import BatchingPolicy, DeviceGate, ModelScheduler, WhenFull
from tests.support.fakes import FakeExecutor, FakeInlineExecutor, FakeLoopExecutor, ManualClock, settle


def rows(n: int, value: float = 1.0, width: int = 2) -> list[np.ndarray]:
    """One request's inputs: a single input of n rows (the scheduler's invariant: dimension 0 = rows)."""
    return [np.full((n, width), value, np.float32)]


def make(
    clock: ManualClock,
    executor: FakeExecutor | None = None,
    batching: BatchingPolicy | None = None,
    queue: int = 0,
    **kwargs,
) -> tuple[ModelScheduler, FakeExecutor, list]:
    executor = executor or FakeExecutor()
    executions: list = []
    scheduler = ModelScheduler(
        executor=executor,
        label="model 'm' version 1",
        max_queue_size=queue,
        batching=batching,
        clock=clock,
        on_execution=lambda n, times, queued: executions.append((n, queued)),
        **kwargs,
    )
    return scheduler, executor, executions


def submit(scheduler: ModelScheduler, n: int = 1, value: float = 1.0, **kwargs) -> asyncio.Task:
    return asyncio.ensure_future(scheduler.submit(rows(n, value), n, **kwargs))


async def test_requests_queued_behind_a_busy_executor_run_as_one_batch():
    clock = ManualClock()
    scheduler, executor, executions = make(clock, batching=BatchingPolicy(max_batch_size=8))
    first = submit(scheduler, 1, 1)
    await settle()
    assert [r.rows for r in executor.runs] == [[1]]  # idle executor: dispatched at once
    queued = [submit(scheduler, n, v) for n, v in ((1, 2), (2, 3), (1, 4))]
    await settle()
    assert len(executor.runs) == 1 and scheduler.queued == 3
    clock.advance(0.004)
    executor.runs[0].finish()
    await settle()
    assert executor.runs[1].rows == [1, 2, 1]  # arrival order, one execution
    executor.runs[1].finish()
    await settle()
    (out,), _, _ = first.result()
    np.testing.assert_array_equal(out, np.full((1, 2), 10, np.float32))
    for task, n, v in zip(queued, (1, 2, 1), (2, 3, 4), strict=True):
        (out,), _, queue_ns = task.result()
        np.testing.assert_array_equal(out, np.full((n, 2), 10 * v, np.float32))  # its own rows only
        assert queue_ns == pytest.approx(4_000_000, abs=1000)  # waited 4 ms on the manual clock
    assert [n for n, _ in executions] == [1, 4]


async def test_a_batch_never_exceeds_max_batch_size():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, batching=BatchingPolicy(max_batch_size=4))
    blocker = submit(scheduler)
    await settle()
    tasks = [submit(scheduler, 1, i) for i in range(3)] + [submit(scheduler, 2, 9)]
    await settle()
    executor.runs[0].finish()
    await settle()
    assert executor.runs[1].rows == [1, 1, 1]  # the 2-row request would make 5
    executor.runs[1].finish()
    await settle()
    assert executor.runs[2].rows == [2]
    executor.runs[2].finish()
    await settle()
    assert all(t.done() for t in (blocker, *tasks))


async def test_partial_batch_waits_for_the_delay_then_goes():
    clock = ManualClock()
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.05)
    scheduler, executor, _ = make(clock, batching=policy)
    task = submit(scheduler)
    await settle()
    assert executor.runs == [] and clock.pending == 1
    clock.advance(0.049)
    await settle()
    assert executor.runs == []
    second = submit(scheduler, 1, 2)
    await settle()
    clock.advance(0.001)  # the oldest request has now waited the whole delay
    await settle()
    assert executor.runs[0].rows == [1, 1]
    executor.runs[0].finish()
    await settle()
    assert task.done() and second.done()


async def test_a_preferred_size_is_sent_without_waiting():
    clock = ManualClock()
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=10.0, preferred=(2,))
    scheduler, executor, _ = make(clock, batching=policy)
    tasks = [submit(scheduler, 1, 1)]
    await settle()
    assert executor.runs == []
    tasks.append(submit(scheduler, 1, 2))
    await settle()
    assert executor.runs[0].rows == [1, 1]  # 2 is preferred: no delay
    tasks.append(submit(scheduler, 1, 3))
    executor.runs[0].finish()
    await settle()
    assert len(executor.runs) == 1  # one request alone waits for the delay
    clock.advance(10.0)
    await settle()
    assert executor.runs[1].rows == [1]


async def test_requests_of_other_dimensions_are_never_batched_together():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, batching=BatchingPolicy(max_batch_size=8))
    blocker = submit(scheduler)
    await settle()
    narrow = asyncio.ensure_future(scheduler.submit([np.ones((1, 2), np.float32)], 1))
    wide = asyncio.ensure_future(scheduler.submit([np.ones((1, 3), np.float32)], 1))
    narrow2 = asyncio.ensure_future(scheduler.submit([np.ones((1, 2), np.float32)], 1))
    await settle()
    executor.runs[0].finish()
    await settle()
    assert [p[0].shape for p in executor.runs[1].parts] == [(1, 2), (1, 2)]
    executor.runs[1].finish()
    await settle()
    assert [p[0].shape for p in executor.runs[2].parts] == [(1, 3)]
    executor.runs[2].finish()
    await settle()
    assert all(t.done() for t in (blocker, narrow, wide, narrow2))


async def test_a_static_batch_is_padded_and_each_request_gets_its_own_rows():
    clock = ManualClock()
    policy = BatchingPolicy(max_batch_size=4, pad_to=4)
    scheduler, executor, _ = make(clock, batching=policy)
    blocker = submit(scheduler)
    await settle()
    a, b = submit(scheduler, 1, 5), submit(scheduler, 2, 7)
    await settle()
    executor.runs[0].finish()
    await settle()
    assert executor.runs[0].pad_to == 4 and executor.runs[1].pad_to == 4
    executor.runs[1].finish()
    await settle()
    np.testing.assert_array_equal(a.result()[0][0], np.full((1, 2), 50, np.float32))
    np.testing.assert_array_equal(b.result()[0][0], np.full((2, 2), 70, np.float32))
    assert blocker.result()[0][0].shape == (1, 2)  # a lone padded request is cut back to its row


async def test_a_full_queue_refuses_at_once():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, queue=2)
    running = submit(scheduler)
    await settle()
    waiting = [submit(scheduler), submit(scheduler)]
    await settle()
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await scheduler.submit(rows(1), 1)
    executor.runs[0].finish()
    await settle()
    executor.runs[1].finish()
    await settle()
    executor.runs[2].finish()
    await settle()
    assert running.done() and all(t.done() for t in waiting)


async def test_a_caller_that_waits_for_room_is_queued_when_a_place_frees_not_refused():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, queue=1)
    running = submit(scheduler, 1, 1.0)
    await settle()
    queued = submit(scheduler, 1, 2.0)
    await settle()
    patient = submit(scheduler, 1, 3.0, when_full=WhenFull.WAIT)
    await settle()
    assert not patient.done() and scheduler.queued == 1  # waiting for room, not in the queue
    with pytest.raises(ResourceExhausted):  # a unary caller is still refused meanwhile
        await scheduler.submit(rows(1), 1)
    executor.runs[0].finish()  # `queued` leaves the queue for the executor: room for `patient`
    await settle()
    assert scheduler.queued == 1 and len(executor.runs) == 2
    executor.runs[1].finish()
    await settle()
    executor.runs[2].finish()
    await settle()
    assert [float(t.result()[0][0][0, 0]) for t in (running, queued, patient)] == [
        10.0,
        20.0,
        30.0,
    ]  # (x10: the fake)


async def test_a_deadline_that_passes_while_waiting_for_room_drops_the_request():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, queue=1)
    submit(scheduler)
    await settle()
    submit(scheduler)  # the queue's one place
    await settle()
    patient = submit(scheduler, 1, 3.0, when_full=WhenFull.WAIT, deadline=clock.now() + 0.5)
    await settle()
    assert not patient.done()
    clock.advance(0.5)
    await settle()
    with pytest.raises(DeadlineExceeded) as e:
        patient.result()
    assert "waited for room" in e.value.message
    assert scheduler.queued == 1 and len(executor.runs) == 1  # it never joined the queue


async def test_wait_for_room_returns_at_once_with_room_and_after_a_withdrawal_without():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, queue=1)
    await asyncio.wait_for(scheduler.wait_for_room(), 1)  # empty queue: no wait
    running = submit(scheduler)
    await settle()
    queued = submit(scheduler)
    await settle()
    room = asyncio.ensure_future(scheduler.wait_for_room())
    await settle()
    assert not room.done()
    queued.cancel()  # a client that leaves frees its place
    await settle()
    assert room.done()
    executor.runs[0].finish()
    await settle()
    assert running.done()


async def test_a_deadline_that_passes_in_the_queue_drops_the_request_before_inference():
    clock = ManualClock()
    scheduler, executor, _ = make(clock)
    running = submit(scheduler)
    await settle()
    late = submit(scheduler, deadline=clock.now() + 0.1)
    kept = submit(scheduler)
    await settle()
    clock.advance(0.1)
    await settle()
    with pytest.raises(DeadlineExceeded, match="deadline expired"):
        late.result()
    executor.runs[0].finish()
    await settle()
    assert len(executor.runs) == 2 and executor.runs[1].rows == [1]  # the late one never ran
    executor.runs[1].finish()
    await settle()
    assert running.done() and kept.done()


async def test_a_cancelled_request_leaves_the_queue():
    clock = ManualClock()
    scheduler, executor, _ = make(clock, batching=BatchingPolicy(max_batch_size=8))
    running = submit(scheduler)
    await settle()
    gone, kept = submit(scheduler, 1, 2), submit(scheduler, 1, 3)
    await settle()
    gone.cancel()  # the client went away
    await settle()
    assert scheduler.queued == 1
    executor.runs[0].finish()
    await settle()
    assert executor.runs[1].rows == [1] and executor.runs[1].parts[0][0][0, 0] == 3
    executor.runs[1].finish()
    await settle()
    assert running.done() and kept.done() and gone.cancelled()


async def test_request_priority_orders_the_queue_before_arrival():
    clock = ManualClock()
    scheduler, executor, _ = make(clock)
    running = submit(scheduler)
    await settle()
    default = submit(scheduler, 1, 1)  # priority 0: after every explicit level
    low = submit(scheduler, 1, 2, priority=3)
    high = submit(scheduler, 1, 3, priority=1)
    await settle()
    order = []
    for _ in range(3):
        executor.runs[-1].finish()
        await settle()
        order.append(float(executor.runs[-1].parts[0][0][0, 0]))
    executor.runs[-1].finish()
    await settle()
    assert order == [3.0, 2.0, 1.0]
    assert all(t.done() for t in (running, default, low, high))


async def test_a_failed_batch_fails_only_its_requests_and_the_next_batch_runs(caplog):
    clock = ManualClock()
    scheduler, executor, executions = make(clock, batching=BatchingPolicy(max_batch_size=2))
    first = submit(scheduler)
    await settle()
    doomed = [submit(scheduler, 1, 1), submit(scheduler, 1, 2)]
    after = submit(scheduler, 1, 3)
    await settle()
    executor.runs[0].finish()
    await settle()
    cause = RuntimeError("Exception from src/plugin.cpp:1:\nshape mismatch in Eltwise")
    failure = InternalError("OpenVINO inference failed: shape mismatch in Eltwise")
    failure.__cause__ = cause
    with caplog.at_level(logging.ERROR, logger="gateway.scheduling.scheduler"):
        executor.runs[1].fail(failure)
        await settle()
    for task in doomed:
        with pytest.raises(InternalError, match="shape mismatch") as caught:
            task.result()
        assert caught.value.__cause__ is cause  # OpenVINO's exception is kept for whoever logs it
    logged = [r for r in caplog.records if r.name == "gateway.scheduling.scheduler"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "model 'm' version 1" in logged[0].getMessage()
    assert "batch of 2 row(s) from 2 request(s)" in logged[0].getMessage()
    assert "shape mismatch in Eltwise" in logged[0].getMessage()
    assert executor.runs[2].rows == [1]  # the next batch runs on the same executor
    executor.runs[2].finish()
    await settle()
    assert first.done() and after.result()[0][0][0, 0] == 30
    assert [n for n, _ in executions] == [1, 1]  # the failed execution is not recorded as one


async def test_an_unexpected_executor_error_becomes_internal_with_its_cause():
    clock = ManualClock()
    scheduler, executor, _ = make(clock)
    task = submit(scheduler)
    await settle()
    bug = ValueError("boom")
    executor.runs[0].fail(bug)
    await settle()
    with pytest.raises(InternalError, match="ValueError: boom") as caught:
        task.result()
    assert caught.value.__cause__ is bug


# --- executions on the loop ----------------------------------------------------------------------


async def test_a_slot_that_runs_on_the_loop_answers_within_submit_with_no_task_of_its_own():
    clock = ManualClock()
    scheduler, executor, executions = make(clock, FakeLoopExecutor())
    loop_turned = []
    asyncio.get_running_loop().call_soon(loop_turned.append, True)
    outputs, _, queued_ns = await scheduler.submit(rows(1, 2.0), 1)
    assert not loop_turned  # answered without the loop turning once: no task, no hand-over
    assert np.array_equal(outputs[0], rows(1, 20.0)[0]) and queued_ns == 0
    assert executor.runs == [] and executor.loop_runs == [2.0] and executions == [(1, [0])]
    assert executor.idle == 1


async def test_requests_queued_for_the_loop_run_in_priority_order_and_a_failure_stays_with_its_own():
    clock = ManualClock()
    executor = FakeLoopExecutor()
    scheduler, _, _ = make(clock, executor)
    held = executor.take()  # the slot is busy: requests queue behind it
    tasks = [submit(scheduler, 1, float(v), priority=p) for v, p in ((1, 3), (2, 1), (3, 2), (4, 1))]
    await settle()
    assert executor.loop_runs == []
    executor.fail_with = InternalError("inference failed: boom")
    executor.give_back(held)
    scheduler.pump()  # one call dispatches the whole queue, one after another, highest priority first
    assert executor.loop_runs == [2.0, 4.0, 3.0, 1.0]
    await settle()
    with pytest.raises(InternalError, match="boom"):
        tasks[1].result()
    assert [np.asarray(tasks[i].result()[0][0]).flat[0] for i in (0, 2, 3)] == [10.0, 30.0, 40.0]


async def test_one_pump_runs_a_whole_queue_on_the_loop_one_after_another_however_deep():
    clock = ManualClock()
    gate = DeviceGate(device="CPU", clock=clock)
    executor = FakeLoopExecutor()
    high, _, _ = make(clock, executor, priority=1, gate=gate)
    low, _, _ = make(clock, FakeExecutor(), priority=3, gate=gate)
    assert gate.active
    held = executor.take()
    tasks = [submit(high, 1, float(v)) for v in range(1, 2001)]  # far deeper than Python's recursion limit
    await settle()
    executor.give_back(held)
    high.pump()
    assert executor.loop_runs == [float(v) for v in range(1, 2001)]
    await settle()
    assert all(t.done() and not t.exception() for t in tasks) and executor.idle == 1
    low.close()


# --- the device gate ---------------------------------------------------------------------------


def gate_pair(clock: ManualClock, streams: int = 1, aging_s: float = 0.5, hold_s: float = 0.02):
    gate = DeviceGate(device="CPU", aging_s=aging_s, hold_s=hold_s, clock=clock)
    high, high_exec, _ = make(clock, FakeExecutor(streams), priority=1, streams=streams, gate=gate)
    low, low_exec, _ = make(clock, FakeExecutor(streams), priority=3, streams=streams, gate=gate)
    return gate, (high, high_exec), (low, low_exec)


async def test_the_gate_stands_aside_when_every_model_has_one_priority():
    clock = ManualClock()
    gate = DeviceGate(device="CPU", clock=clock)
    a, a_exec, _ = make(clock, priority=2, gate=gate)
    b, b_exec, _ = make(clock, priority=2, gate=gate)
    tasks = [submit(a), submit(b)]
    await settle()
    assert not gate.active and len(a_exec.runs) == len(b_exec.runs) == 1  # both run at once
    a_exec.runs[0].finish()
    b_exec.runs[0].finish()
    await settle()
    assert all(t.done() for t in tasks)


async def test_a_free_slot_goes_to_the_higher_priority_model():
    clock = ManualClock()
    gate, (high, high_exec), (low, low_exec) = gate_pair(clock)
    assert gate.active and gate.capacity == 1
    first_low = submit(low, 1, 1)
    await settle()
    assert len(low_exec.runs) == 1  # the device was free
    waiting_low = submit(low, 1, 2)
    waiting_high = submit(high, 1, 3)
    await settle()
    assert high_exec.runs == [] and len(low_exec.runs) == 1  # one stream, taken
    clock.advance(0.001)
    low_exec.runs[0].finish()
    await settle()
    assert len(high_exec.runs) == 1 and len(low_exec.runs) == 1  # high went first, though it came later
    high_exec.runs[0].finish()
    await settle()
    clock.advance(0.02)  # high's hold on its slot ends
    await settle()
    assert len(low_exec.runs) == 2
    low_exec.runs[1].finish()
    await settle()
    assert all(t.done() for t in (first_low, waiting_low, waiting_high))


async def test_slots_a_higher_priority_used_lately_stay_reserved_for_hold_s():
    clock = ManualClock()
    gate, (high, high_exec), (low, low_exec) = gate_pair(clock, streams=2, hold_s=0.02)
    busy = [submit(high), submit(high)]
    await settle()
    assert len(high_exec.runs) == 2  # high's peak is 2 slots
    high_exec.runs[0].finish()
    await settle()
    late_low = submit(low)
    await settle()
    assert low_exec.runs == []  # a slot is free, but high used both within hold_s
    high_exec.runs[1].finish()
    await settle()
    clock.advance(0.019)
    await settle()
    assert low_exec.runs == []
    clock.advance(0.001)  # high has used nothing for hold_s: its reservation lapses
    await settle()
    assert len(low_exec.runs) == 1
    low_exec.runs[0].finish()
    await settle()
    assert all(t.done() for t in (*busy, late_low))


async def test_a_low_priority_request_is_not_starved_past_aging_s():
    clock = ManualClock()
    gate, (high, high_exec), (low, low_exec) = gate_pair(clock, aging_s=0.5)
    first_high = submit(high, 1, 1)
    await settle()
    starving = submit(low, 1, 2)
    await settle()
    done = [first_high]
    # high keeps the device busy: each time its run ends, another high request is already waiting
    for step in range(4):
        done.append(submit(high, 1, 3))
        await settle()
        clock.advance(0.1)
        high_exec.running[0].finish()
        await settle()
        assert low_exec.runs == [], step
    done.append(submit(high, 1, 3))
    await settle()
    clock.advance(0.1)  # the low request has now waited 0.5 s: it goes next, whatever the priorities
    high_exec.running[0].finish()
    await settle()
    assert len(low_exec.runs) == 1 and high_exec.running == []
    low_exec.runs[0].finish()
    await settle()
    assert starving.done()
    clock.advance(0.02)
    await settle()
    high_exec.running[0].finish()
    await settle()
    assert all(t.done() for t in done)


async def test_a_higher_priority_running_in_one_stream_holds_the_whole_device():
    clock = ManualClock()
    gate, (high, high_exec), (low, low_exec) = gate_pair(clock, streams=2, hold_s=0.02)
    assert gate.capacity == 2
    one_high = submit(high)
    await settle()
    low_task = submit(low)
    await settle()
    assert len(high_exec.runs) == 1 and low_exec.runs == []  # a stream is free, but its cores are high's
    clock.advance(0.01)
    high_exec.runs[0].finish()
    await settle()
    clock.advance(0.019)
    await settle()
    assert low_exec.runs == []  # high's closed-loop client may be between two requests
    next_high = submit(high)
    await settle()
    assert len(high_exec.runs) == 2 and low_exec.runs == []
    high_exec.runs[1].finish()
    await settle()
    clock.advance(0.02)  # high idle for hold_s: low may run
    await settle()
    assert len(low_exec.runs) == 1
    low_exec.runs[0].finish()
    await settle()
    assert all(t.done() for t in (one_high, next_high, low_task))


async def test_aging_gives_a_held_off_model_one_execution_per_aging_s_alone_on_the_device():
    clock = ManualClock(start=0.0)
    gate, (high, high_exec), (low, low_exec) = gate_pair(clock, streams=2, aging_s=0.5)
    done = [submit(high)]
    await settle()
    lows = [submit(low, 1, v) for v in (1, 2, 3)]
    await settle()
    clock.advance(0.5)
    await settle()
    assert low_exec.runs == []  # aged, but not beside high's run: it waits for the device to empty
    done.append(submit(high))
    await settle()
    assert len(high_exec.runs) == 1  # and high's next request waits behind it
    high_exec.running[0].finish()
    await settle()
    assert len(low_exec.runs) == 1 and high_exec.running == []  # low's turn, alone
    low_exec.runs[0].finish()
    await settle()
    assert len(high_exec.running) == 1
    started: list[float] = []  # clock times low's later executions began
    for _ in range(24):  # high as a closed-loop client with no gap, in one stream, to 1.25 s
        clock.advance(1 / 32)  # exact in binary: the aging times below compare exactly
        await settle()
        for run in low_exec.running:
            run.finish()
        await settle()
        if high_exec.running:
            high_exec.running[0].finish()
            done.append(submit(high))
        await settle()
        started += [clock.now()] * (len(low_exec.runs) - 1 - len(started))
    assert started == [1.0]  # all three had waited 0.5 s, but the next turn comes 0.5 s after the last
    clock.advance(0.5)
    for _ in range(3):
        await settle()
        for run in low_exec.running + high_exec.running:
            run.finish()
    await settle()
    assert len(low_exec.runs) == 3 and all(t.done() for t in (*done, *lows))


async def test_a_closed_scheduler_leaves_the_gate():
    clock = ManualClock()
    gate, (high, _), (low, _) = gate_pair(clock)
    assert gate.active
    low.close()
    assert not gate.active  # one priority left: the gate stands aside
    high.close()


# --- the load-adaptive executor -------------------------------------------------------------------


def _adaptive(compiler: _InlineCompiler | None = None):
    """A scheduler over a latency (1 place) and a throughput (2 places) fake, inline made by `compiler`
    (None: never inline)."""
    latency, throughput = FakeExecutor(1), FakeExecutor(2)
    adaptive = LoadAdaptiveExecutor(latency=latency, throughput=throughput, compile_inline=compiler)
    scheduler, _, _ = make(ManualClock(), adaptive)
    return scheduler, adaptive, latency, throughput


async def _lone_requests(scheduler, latency, throughput, n: int, latency_ns: int, throughput_ns: int) -> list:
    """n requests one after another (each finds the model idle); returns the execution each ran on."""
    ran = []
    for value in range(n):
        task = submit(scheduler, 1, value)
        await settle()
        if latency.running:
            ran.append(Execution.LATENCY)
            latency.running[0].finish(latency_ns)
        else:
            ran.append(Execution.THROUGHPUT)
            throughput.running[0].finish(throughput_ns)
        await settle()
        assert task.result()[0][0][0, 0] == 10 * value
    return ran


async def test_lone_requests_go_where_lone_inferences_were_measured_faster():
    scheduler, adaptive, latency, throughput = _adaptive()
    # A compute-bound model: 20 ms alone on every core, 40 ms on one stream.
    ran = await _lone_requests(scheduler, latency, throughput, 2 * EXPLORE_EVERY, 20_000_000, 40_000_000)
    # Each warmed (its first run not counted), then measured; then one lone request in EXPLORE_EVERY probes.
    assert ran[:4] == [Execution.LATENCY, Execution.LATENCY, Execution.THROUGHPUT, Execution.THROUGHPUT]
    assert adaptive.favoured() is Execution.LATENCY
    assert ran.count(Execution.THROUGHPUT) == 2 + 2
    assert adaptive.solo_s == {Execution.LATENCY: 0.02, Execution.THROUGHPUT: 0.04, Execution.INLINE: None}


async def test_a_tiny_model_s_lone_requests_stay_on_the_streams():
    scheduler, adaptive, latency, throughput = _adaptive()
    # 80 us against 220 us alone: 2.75 x faster, but 0.14 ms sooner is not worth the CPU.
    ran = await _lone_requests(scheduler, latency, throughput, 2 * EXPLORE_EVERY, 80_000, 220_000)
    assert adaptive.favoured() is Execution.THROUGHPUT
    assert ran.count(Execution.LATENCY) == 2 + 2  # its warm-up and measurement, then one in EXPLORE_EVERY


async def test_the_favoured_execution_follows_the_traffic():
    scheduler, adaptive, latency, throughput = _adaptive()
    await _lone_requests(scheduler, latency, throughput, 4, 20_000_000, 40_000_000)
    assert adaptive.favoured() is Execution.LATENCY
    # The inputs grow small (a dynamic-shape model): the latency execution stops paying.
    await _lone_requests(scheduler, latency, throughput, 4 * EXPLORE_EVERY, 100_000, 150_000)
    assert adaptive.favoured() is Execution.THROUGHPUT


async def test_overlapping_requests_go_to_the_throughput_streams_within_nireq():
    scheduler, adaptive, latency, throughput = _adaptive()
    assert adaptive.nireq == 2 and adaptive.idle == 2
    tasks = [submit(scheduler, 1, v) for v in (1, 2, 3, 4)]
    await settle()
    # The first found the model idle; the second overlaps it; nireq (2) bounds what runs at once.
    assert len(latency.running) == 1 and len(throughput.running) == 1 and scheduler.queued == 2
    assert adaptive.busy == 2 and adaptive.idle == 0
    latency.running[0].finish()
    await settle()
    # The freed place goes to the throughput execution: the model is not idle.
    assert len(latency.runs) == 1 and len(throughput.running) == 2 and scheduler.queued == 1
    throughput.running[0].finish()
    await settle()
    assert len(throughput.runs) == 3 and scheduler.queued == 0
    for run in throughput.running:
        run.finish()
    await settle()
    assert [t.result()[0][0][0, 0] for t in tasks] == [10, 20, 30, 40]
    assert adaptive.runs == {Execution.LATENCY: 1, Execution.THROUGHPUT: 3, Execution.INLINE: 0}
    assert adaptive.busy == 0 and latency.idle == 1 and throughput.idle == 2


@pytest.mark.parametrize(
    "throughput_s, latency_s, pays",
    [
        (0.046, 0.024, True),  # ResNet-50-shaped on 2 cores: half the time, 22 ms sooner
        (0.000211, 0.000130, False),  # `simple`: 1.6 x faster, but 0.08 ms is not worth the CPU
        (0.010, 0.0085, False),  # 1.5 ms sooner but only 1.18 x
        (0.004, 0.002, True),  # 2 x and 2 ms
        (0.0025, 0.0013, True),  # `make bench`'s super-resolution model: 1.9 x, 1.2 ms sooner
        (0.0010, 0.0005, True),  # 2 x and 0.5 ms: both bounds
        (0.0009, 0.0005, False),  # 1.8 x, but only 0.4 ms sooner
    ],
)
def test_a_latency_execution_is_kept_only_where_it_pays(throughput_s, latency_s, pays):
    assert latency_execution_pays(throughput_s, latency_s) is pays


class _InlineCompiler:
    """compile_inline for the adaptive executor: counts calls; finishes when the test says (or fails)."""

    def __init__(self, executor: FakeInlineExecutor | None = None, error: Exception | None = None):
        self.executor, self.error, self.calls = executor, error, 0
        self.ready = asyncio.Event()

    async def __call__(self) -> FakeInlineExecutor:
        self.calls += 1
        await self.ready.wait()
        if self.error is not None:
            raise self.error
        assert self.executor is not None
        return self.executor


async def _lone_with_inline(scheduler, latency, throughput, inline, n: int, latency_ns: int) -> list:
    """n lone requests; returns where each ran (inline ones answer without a run to finish)."""
    ran = []
    for value in range(n):
        before = inline.inline_runs if inline else 0
        task = submit(scheduler, 1, value)
        await settle()
        if inline is not None and inline.inline_runs > before:
            ran.append(Execution.INLINE)
        elif latency.running:
            ran.append(Execution.LATENCY)
            latency.running[0].finish(latency_ns)
        else:
            ran.append(Execution.THROUGHPUT)
            throughput.running[0].finish(latency_ns * 2)
        await settle()
        assert task.result()[0][0][0, 0] == 10 * value
    return ran


async def test_a_tiny_model_s_lone_requests_run_inline_once_its_one_thread_execution_is_built():
    inline = FakeInlineExecutor(infer_ns=30_000)
    compiler = _InlineCompiler(inline)
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    # 150 us alone on the latency execution, its hand-over included: under INLINE_CANDIDATE_S.
    ran = await _lone_with_inline(scheduler, latency, throughput, None, 4, 150_000)
    assert ran == [Execution.LATENCY, Execution.LATENCY, Execution.THROUGHPUT, Execution.THROUGHPUT]
    assert compiler.calls == 1 and adaptive.inline_state is InlineState.COMPILING
    compiler.ready.set()
    await settle()
    assert adaptive.inline_state is InlineState.READY
    ran = await _lone_with_inline(scheduler, latency, throughput, inline, 2 * EXPLORE_EVERY, 150_000)
    # Warmed and measured (30 us: under INLINE_BELOW_S), then favoured on that figure alone: no probes of the
    # threaded executions, whose figures would inform no choice while it holds.
    assert ran == [Execution.INLINE] * (2 * EXPLORE_EVERY)
    assert adaptive.favoured() is Execution.INLINE and adaptive.solo_s[Execution.INLINE] == 0.00003
    assert adaptive.runs[Execution.INLINE] == inline.inline_runs and compiler.calls == 1
    assert adaptive.busy == 0 and inline.idle == 1


async def _closed_loop(scheduler, latency, throughput, n: int, infer_ns: int) -> list:
    """n requests, all queued at once, their threaded runs finished one at a time, so that the model never
    idles between them (no request after the first finds it idle); returns the tasks, all done."""
    tasks = [submit(scheduler, 1, v) for v in range(n)]
    while not all(t.done() for t in tasks):
        await settle()
        running = latency.running + throughput.running
        if running:
            running[0].finish(infer_ns)
    await settle()
    assert [t.result()[0][0][0, 0] for t in tasks] == [10 * v for v in range(n)]
    return tasks


async def test_a_tiny_model_under_load_from_its_first_request_still_runs_inline():
    # A gateway started into traffic (a replica the autoscaler added): after the first request, every one
    # overlaps another, so no lone run measures the latency execution. A run that shared the cores and
    # still took 150 us says the model is quick enough; the inline execution is built and tried.
    inline = FakeInlineExecutor(infer_ns=30_000)
    compiler = _InlineCompiler(inline)
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _closed_loop(scheduler, latency, throughput, 40, 150_000)
    assert len(latency.runs) == 1, "only the first request found the model idle"
    assert compiler.calls == 1 and adaptive.inline_state is InlineState.READY
    assert adaptive.favoured() is Execution.INLINE and inline.inline_runs >= 30
    threaded = len(throughput.runs)
    await _closed_loop(scheduler, latency, throughput, 20, 150_000)
    assert len(throughput.runs) == threaded and adaptive.runs[Execution.INLINE] == inline.inline_runs


async def test_under_load_an_inline_execution_too_slow_for_the_loop_is_tried_once_and_left():
    inline = FakeInlineExecutor(infer_ns=int(INLINE_BELOW_S * 3e9))
    compiler = _InlineCompiler(inline)
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _closed_loop(scheduler, latency, throughput, 40, 150_000)
    # Its warm-up and one measured run, then the streams again.
    assert inline.inline_runs == 2 and adaptive.favoured() is not Execution.INLINE
    threaded = len(latency.runs) + len(throughput.runs)
    await _closed_loop(scheduler, latency, throughput, 20, 150_000)
    assert inline.inline_runs == 2 and len(latency.runs) + len(throughput.runs) == threaded + 20


async def test_under_load_a_model_whose_shared_runs_are_slow_is_never_compiled_inline():
    compiler = _InlineCompiler(FakeInlineExecutor())
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _closed_loop(scheduler, latency, throughput, 40, int(INLINE_CANDIDATE_S * 2e9))
    assert compiler.calls == 0 and adaptive.inline_state is InlineState.NOT_WANTED


async def test_a_model_too_slow_for_the_event_loop_is_never_compiled_inline():
    compiler = _InlineCompiler(FakeInlineExecutor())
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _lone_with_inline(
        scheduler, latency, throughput, None, EXPLORE_EVERY, int(INLINE_CANDIDATE_S * 2e9)
    )
    assert compiler.calls == 0 and adaptive.inline_state is InlineState.NOT_WANTED


async def test_inline_runs_that_grow_slow_hand_lone_requests_back_to_the_threads():
    inline = FakeInlineExecutor(infer_ns=30_000)
    compiler = _InlineCompiler(inline)
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _lone_with_inline(scheduler, latency, throughput, inline, 8, 150_000)
    assert adaptive.favoured() is Execution.INLINE
    # The inputs grow (a dynamic-shape model): inline runs now block the loop too long.
    inline.infer_ns = int(INLINE_BELOW_S * 3e9)
    ran = await _lone_with_inline(scheduler, latency, throughput, inline, 4 * EXPLORE_EVERY, 150_000)
    assert adaptive.favoured() is not Execution.INLINE
    recent = ran[-2 * EXPLORE_EVERY :]
    assert recent.count(Execution.INLINE) <= 1  # only probes go there now
    assert Execution.LATENCY in recent and Execution.THROUGHPUT in recent  # the others' probes resumed


async def test_a_failed_inline_compile_is_not_tried_again_and_requests_keep_the_threads():
    compiler = _InlineCompiler(error=RuntimeError("no memory"))
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    ran = await _lone_with_inline(scheduler, latency, throughput, None, EXPLORE_EVERY, 150_000)
    assert adaptive.inline_state is InlineState.FAILED and compiler.calls == 1
    assert Execution.INLINE not in ran


async def test_overlapping_requests_wait_their_turn_inline_while_it_is_favoured():
    inline = FakeInlineExecutor(infer_ns=30_000)
    compiler = _InlineCompiler(inline)
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _lone_with_inline(scheduler, latency, throughput, inline, 8, 150_000)
    assert adaptive.favoured() is Execution.INLINE
    runs_before, inline_before = len(throughput.runs), inline.inline_runs
    tasks = [submit(scheduler, 1, v) for v in (1, 2, 3)]
    await settle(30)
    # While the first held the inline slot the others stayed queued, none handed to the streams: a
    # hand-over costs the loop more than waiting for a run this quick.
    assert len(throughput.runs) == runs_before and inline.inline_runs == inline_before + 3
    assert [t.result()[0][0][0, 0] for t in tasks] == [10, 20, 30]
    assert adaptive.busy == 0 and inline.idle == 1
    assert adaptive.runs[Execution.INLINE] == inline.inline_runs


async def test_inline_runs_are_judged_by_their_cpu_time_not_by_the_time_others_held_the_core():
    inline = FakeInlineExecutor(infer_ns=30_000)
    compiler = _InlineCompiler(inline)
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _lone_with_inline(scheduler, latency, throughput, inline, 8, 150_000)
    # Worker processes and the client share the cores: each run waits for the core far longer than it
    # computes. A hand-over would not spare the loop that wait, so inline keeps the requests.
    inline.preempted_ns = int(INLINE_BELOW_S * 3e9)
    before, runs_before = inline.inline_runs, len(throughput.runs)
    tasks = [submit(scheduler, 1, v) for v in range(1, 2 * SAMPLES + 1)]
    await settle(20 * SAMPLES)
    assert all(t.done() for t in tasks) and inline.inline_runs == before + 2 * SAMPLES
    assert len(throughput.runs) == runs_before and adaptive.favoured() is Execution.INLINE
    assert adaptive.solo_s[Execution.INLINE] == 30_000 / 1e9


async def test_an_overlapped_inline_run_is_a_sample_and_slow_ones_hand_requests_back_to_the_streams():
    inline = FakeInlineExecutor(infer_ns=30_000)
    compiler = _InlineCompiler(inline)
    compiler.ready.set()
    scheduler, adaptive, latency, throughput = _adaptive(compiler)
    await _lone_with_inline(scheduler, latency, throughput, inline, 8, 150_000)
    # The inline runs grow slow (larger inputs of a dynamic model): each is what the event loop spends, so
    # each counts, and after SAMPLES of them requests leave the loop.
    inline.infer_ns = int(INLINE_BELOW_S * 2e9)
    before = inline.inline_runs
    tasks = [submit(scheduler, 1, v) for v in range(1, SAMPLES + 1)]
    await settle(10 * SAMPLES)
    assert inline.inline_runs == before + SAMPLES and all(t.done() for t in tasks)
    # SAMPLES slow inline runs, all but the first overlapped: had those not counted, the quickest of the
    # last SAMPLES would still be a fast lone run.
    assert adaptive.solo_s[Execution.INLINE] == INLINE_BELOW_S * 2
    assert adaptive.favoured() is not Execution.INLINE
    before = inline.inline_runs
    tasks = [submit(scheduler, 1, v) for v in (1, 2)]
    await settle()
    assert inline.inline_runs == before  # both on the threaded executions now
    for run in latency.running + throughput.running:
        run.finish()
    await settle()
    assert [t.result()[0][0][0, 0] for t in tasks] == [10, 20]


async def test_slow_lone_runs_turn_the_choice_only_when_all_recent_ones_are_slow():
    scheduler, adaptive, latency, throughput = _adaptive()
    await _lone_requests(scheduler, latency, throughput, 4, 20_000_000, 40_000_000)
    assert adaptive.favoured() is Execution.LATENCY
    # All but one of the last SAMPLES runs preempted (37 ms instead of 20): noise, the latency one stays.
    await _lone_requests(scheduler, latency, throughput, SAMPLES - 1, 37_000_000, 40_000_000)
    assert adaptive.favoured() is Execution.LATENCY and adaptive.solo_s[Execution.LATENCY] == 0.02
    # One more: the workload changed (no longer 1.25 x faster), and the choice follows it.
    await _lone_requests(scheduler, latency, throughput, 1, 37_000_000, 40_000_000)
    assert adaptive.favoured() is Execution.THROUGHPUT


async def test_a_lone_run_that_another_request_started_beside_is_no_sample():
    scheduler, adaptive, latency, throughput = _adaptive()
    await _lone_requests(scheduler, latency, throughput, 4, 20_000_000, 40_000_000)
    assert adaptive.solo_s[Execution.LATENCY] == 0.02
    # A closed-loop window at c=2 begins: its first request finds the model idle, the second overlaps it
    # on the streams, and sharing the cores makes both slow. Repeated, it must not turn the choice.
    for _ in range(SAMPLES + 1):
        tasks = [submit(scheduler, 1, v) for v in (1, 2)]
        await settle()
        assert len(latency.running) == 1 and len(throughput.running) == 1
        latency.running[0].finish(45_000_000)
        throughput.running[0].finish(60_000_000)
        await settle()
        assert [t.result()[0][0][0, 0] for t in tasks] == [10, 20]
    assert adaptive.solo_s == {Execution.LATENCY: 0.02, Execution.THROUGHPUT: 0.04, Execution.INLINE: None}
    assert adaptive.favoured() is Execution.LATENCY
    # A lone run that nothing joins is a sample again.
    await _lone_requests(scheduler, latency, throughput, 1, 18_000_000, 40_000_000)
    assert adaptive.solo_s[Execution.LATENCY] == 0.018


async def test_a_batch_s_copy_of_its_requests_inputs_counts_against_the_memory_budget_while_it_runs():
    from gateway.memory.budget import RequestMemoryBudget

    clock = ManualClock()
    memory = RequestMemoryBudget(1 << 20)
    scheduler, executor, _ = make(clock, batching=BatchingPolicy(max_batch_size=8), memory=memory)
    first = submit(scheduler, 1, 1)
    await settle()
    assert memory.held_bytes == 0  # a request alone runs on its own arrays: no copy
    queued = [submit(scheduler, 2, 2), submit(scheduler, 3, 3)]
    await settle()
    executor.runs[0].finish()
    await settle()
    assert executor.runs[1].rows == [2, 3]
    assert memory.held_bytes == 5 * 2 * 4  # five rows of two FP32 values, stacked into one batch
    executor.runs[1].finish()
    await settle()
    assert memory.held_bytes == 0
    await asyncio.gather(first, *queued)
