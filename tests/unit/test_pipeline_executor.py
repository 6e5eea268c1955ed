"""The pipeline executor (pipeline.py) with fake model versions whose inferences the test finishes: what
runs concurrently, what a failing node does to the rest of the request, and what nodes are handed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.config.pipelines import parse_pipeline_entry
from gateway.core.errors import GatewayError, ResourceExhausted
from gateway.core.records import InferInput, InferOutput, TensorSpec
from gateway.pipelines.executor import INLINE_CHAIN_LIMIT, Pipeline
from gateway.pipelines.graph import ModelPorts, build_graph
from gateway.scheduling.scheduler import WhenFull


class FakeVersion:
    """A model version: y = x + 1 on FP32 [-1, 4]; each inference waits until the test releases it."""

    def __init__(self, name: str, produce=lambda x: x + 1):
        self.name = name
        self.started: list[asyncio.Future] = []
        self.calls: list[dict] = []
        self.cancelled = 0
        self.fail_with: GatewayError | None = None
        self.produce = produce
        self.full = False

    def refuse_if_full(self) -> None:
        if self.full:
            raise ResourceExhausted(f"model '{self.name}': the queue is full")

    async def infer(self, inputs, requested, priority=0, deadline=None, when_full=None):
        release = asyncio.get_running_loop().create_future()
        self.started.append(release)
        self.calls.append(
            {"priority": priority, "deadline": deadline, "shape": inputs[0].shape, "when_full": when_full}
        )
        try:
            await release
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        y = self.produce(inputs[0].data)
        return [InferOutput("y", "FP32", y.shape, y)]


def ports(name: str) -> ModelPorts:
    """Every fake model takes x FP32 [-1,4]; `split` gives one [1,4] row per slice: y [-1,1,4]."""
    out = (-1, 1, 4) if name == "split" else (-1, 4)
    return ModelPorts(name, 1, (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", out),))


def make_pipeline(entry: dict, versions: dict[str, FakeVersion]) -> Pipeline:
    settings = parse_pipeline_entry(entry)
    graph = build_graph(settings, set(), {}, lambda name, version: ports(name), None)  # type: ignore[arg-type]
    pipeline = Pipeline(settings.name, settings, lambda name, version: versions[name])  # type: ignore[arg-type,return-value]
    pipeline.activate(graph)
    return pipeline


def node(name, model, source, **extra):
    return {
        "name": name,
        "type": "DL model",
        "model_name": model,
        "inputs": [{"x": {"node_name": source[0], "data_item": source[1]}}],
        "outputs": [{"data_item": "y", "alias": "y"}],
        **extra,
    }


def request(x: np.ndarray) -> list[InferInput]:
    return [InferInput("x", "FP32", x.shape, x)]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_independent_nodes_run_at_once_and_the_join_waits_for_both():
    versions = {m: FakeVersion(m) for m in ("left", "right", "join")}
    two_inputs = node("join", "join", ("left", "y"))
    pipeline = make_pipeline(
        {
            "name": "p",
            "inputs": ["x"],
            "nodes": [
                node("left", "left", ("request", "x")),
                node("right", "right", ("request", "x")),
                two_inputs,
            ],
            "outputs": [
                {"joined": {"node_name": "join", "data_item": "y"}},
                {"right": {"node_name": "right", "data_item": "y"}},
            ],
        },
        versions,
    )
    x = np.zeros((2, 4), np.float32)
    task = asyncio.ensure_future(pipeline.infer(request(x), None))
    await settle()
    assert len(versions["left"].started) == 1 and len(versions["right"].started) == 1  # both at once
    assert not versions["join"].started
    versions["left"].started[0].set_result(None)
    await settle()
    assert len(versions["join"].started) == 1  # as soon as its one input is ready, not after `right`
    versions["join"].started[0].set_result(None)
    versions["right"].started[0].set_result(None)
    outputs = {o.name: o.data for o in await task}
    np.testing.assert_array_equal(outputs["joined"], x + 2)
    np.testing.assert_array_equal(outputs["right"], x + 1)


async def test_branches_run_at_once_and_a_failed_one_stops_the_others():
    versions = {"m": FakeVersion("m")}
    pipeline = make_pipeline(
        {
            "name": "p",
            "inputs": ["x"],
            "demultiply_count": -1,
            "nodes": [node("each", "m", ("request", "x"))],
            "outputs": [{"y": {"node_name": "each", "data_item": "y"}}],
        },
        versions,
    )
    task = asyncio.ensure_future(
        pipeline.infer(request(np.zeros((3, 1, 4), np.float32)), None, priority=1, deadline=5.0)
    )
    await settle()
    model = versions["m"]
    assert len(model.started) == 3  # one inference per branch, all queued at once
    assert all(c["shape"] == (1, 4) and c["priority"] == 1 and c["deadline"] == 5.0 for c in model.calls)
    model.fail_with = ResourceExhausted("the queue is full")
    model.started[1].set_result(None)
    with pytest.raises(ResourceExhausted) as e:
        await task
    assert "pipeline 'p' node 'each': the queue is full" == e.value.message  # the node's status, named
    await settle()
    assert model.cancelled == 2  # the other branches were stopped


async def test_a_demultiplexer_with_zero_rows_stops_the_request():
    versions = {
        "split": FakeVersion("split", lambda x: np.zeros((0, 1, 4), np.float32)),
        "each": FakeVersion("each"),
    }
    pipeline = make_pipeline(
        {
            "name": "p",
            "inputs": ["x"],
            "nodes": [
                node("split", "split", ("request", "x"), demultiply_count=-1),
                node("each", "each", ("split", "y")),
            ],
            "outputs": [{"y": {"node_name": "each", "data_item": "y"}}],
        },
        versions,
    )
    task = asyncio.ensure_future(pipeline.infer(request(np.zeros((1, 4), np.float32)), None))
    await settle()
    versions["split"].started[0].set_result(None)
    with pytest.raises(GatewayError) as e:
        await task
    assert "node 'split': produced 0 branches" in e.value.message
    assert not versions["each"].started


async def test_the_response_gathers_branches_in_order_whatever_order_they_finish():
    rows = lambda x: np.arange(3, dtype=np.float32).reshape(3, 1, 1) * np.ones((3, 1, 4), np.float32)  # noqa: E731
    versions = {"split": FakeVersion("split", rows), "each": FakeVersion("each")}
    pipeline = make_pipeline(
        {
            "name": "p",
            "inputs": ["x"],
            "nodes": [
                node("split", "split", ("request", "x"), demultiply_count=3),
                node("each", "each", ("split", "y")),
            ],
            "outputs": [{"y": {"node_name": "each", "data_item": "y"}}],
        },
        versions,
    )
    assert pipeline.outputs[0].shape == (3, -1, 4)  # the gather's dimension, then each branch's [-1,4]
    task = asyncio.ensure_future(pipeline.infer(request(np.zeros((1, 4), np.float32)), None))
    await settle()
    versions["split"].started[0].set_result(None)
    await settle()
    each = versions["each"]
    assert [c["shape"] for c in each.calls] == [(1, 4)] * 3
    for release in reversed(each.started):  # the last branch finishes first
        release.set_result(None)
    (out,) = await task
    np.testing.assert_array_equal(
        out.data, np.arange(1, 4, dtype=np.float32).reshape(3, 1, 1) * np.ones((3, 1, 4))
    )


def test_gathering_consecutive_rows_of_one_array_is_a_view_and_anything_else_a_copy():
    from gateway.pipelines.executor import _stack

    batch = np.arange(24, dtype=np.float32).reshape(4, 1, 6)
    rows = [batch[i : i + 1][0] for i in range(4)]  # what a batched model node hands its branches
    gathered = _stack(rows)
    np.testing.assert_array_equal(gathered, batch)
    assert np.shares_memory(gathered, batch) and not gathered.flags.writeable
    shuffled = _stack([rows[1], rows[0], rows[2], rows[3]])
    np.testing.assert_array_equal(shuffled, batch[[1, 0, 2, 3]])
    assert not np.shares_memory(shuffled, batch)
    apart = [np.ones((1, 6), np.float32), np.zeros((1, 6), np.float32)]
    np.testing.assert_array_equal(_stack(apart), np.stack(apart))
    strided = [batch[i, :, ::2] for i in range(4)]  # not contiguous: copied
    np.testing.assert_array_equal(_stack(strided), batch[:, :, ::2])
    assert not np.shares_memory(_stack(strided), batch)


async def test_admission_refuses_on_the_entry_nodes_and_admitted_nodes_wait_for_room():
    versions = {"first": FakeVersion("first"), "second": FakeVersion("second")}
    pipeline = make_pipeline(
        {
            "name": "p",
            "inputs": ["x"],
            "nodes": [node("a", "first", ("request", "x")), node("b", "second", ("a", "y"))],
            "outputs": [{"y": {"node_name": "b", "data_item": "y"}}],
        },
        versions,
    )
    versions["second"].full = True  # not fed by the request: its queue is judged when the node runs
    pipeline.refuse_if_full()
    versions["first"].full = True
    with pytest.raises(ResourceExhausted) as e:
        pipeline.refuse_if_full()
    assert e.value.message == "pipeline 'p' node 'a': model 'first': the queue is full"
    task = asyncio.ensure_future(pipeline.infer(request(np.zeros((1, 4), np.float32)), None))
    await settle()
    versions["first"].started[0].set_result(None)
    await settle()
    versions["second"].started[0].set_result(None)
    await task
    assert [c["when_full"] for v in versions.values() for c in v.calls] == [WhenFull.WAIT, WhenFull.WAIT]


class InstantVersion(FakeVersion):
    """y = x + 1 at once; remembers the asyncio task each inference ran in."""

    def __init__(self, name: str):
        super().__init__(name)
        self.tasks: list[asyncio.Task | None] = []

    async def infer(self, inputs, requested, priority=0, deadline=None, when_full=None):
        self.tasks.append(asyncio.current_task())
        y = inputs[0].data + 1
        return [InferOutput("y", "FP32", y.shape, y)]


def chain(length: int) -> dict:
    nodes = [node("n0", "m", ("request", "x"))]
    nodes += [node(f"n{i}", "m", (f"n{i - 1}", "y")) for i in range(1, length)]
    return {
        "name": "p",
        "inputs": ["x"],
        "nodes": nodes,
        "outputs": [{"y": {"node_name": f"n{length - 1}", "data_item": "y"}}],
    }


@pytest.mark.parametrize("length", [3, INLINE_CHAIN_LIMIT, INLINE_CHAIN_LIMIT + 1, 400])
async def test_a_chain_runs_in_the_requests_own_task_unless_it_is_longer_than_the_limit(length):
    """Each node of a chain runs inside the task that needs it (no task and loop turn per node); a chain
    longer than INLINE_CHAIN_LIMIT gets a task per node instead, and runs whatever its length."""
    versions = {"m": InstantVersion("m")}
    pipeline = make_pipeline(chain(length), versions)
    (out,) = await pipeline.infer(request(np.zeros((2, 4), np.float32)), None)
    np.testing.assert_array_equal(out.data, np.full((2, 4), length, np.float32))
    tasks = set(versions["m"].tasks)
    if length <= INLINE_CHAIN_LIMIT:
        assert tasks == {asyncio.current_task()}
    else:
        assert len(tasks) == length and asyncio.current_task() not in tasks


def fan_out() -> tuple[dict[str, FakeVersion], Pipeline]:
    """`src` feeds `a` and `b`, and the response takes both: two consumers of one node, side by side."""
    versions = {m: FakeVersion(m) for m in ("src", "a", "b")}
    entry = {
        "name": "p",
        "inputs": ["x"],
        "nodes": [
            node("src", "src", ("request", "x")),
            node("a", "a", ("src", "y")),
            node("b", "b", ("src", "y")),
        ],
        "outputs": [
            {"a": {"node_name": "a", "data_item": "y"}},
            {"b": {"node_name": "b", "data_item": "y"}},
        ],
    }
    return versions, make_pipeline(entry, versions)


async def test_a_node_two_branches_wait_for_runs_once_and_its_failure_fails_both_once():
    """`src` runs once, in the task that needed it first; when it fails, the request fails with its
    message and neither consumer runs."""
    versions, pipeline = fan_out()
    task = asyncio.ensure_future(pipeline.infer(request(np.zeros((1, 4), np.float32)), None))
    await settle()
    assert len(versions["src"].started) == 1
    versions["src"].fail_with = ResourceExhausted("the queue is full")
    versions["src"].started[0].set_result(None)
    with pytest.raises(ResourceExhausted) as e:
        await task
    assert e.value.message == "pipeline 'p' node 'src': the queue is full"
    await settle()
    assert not versions["a"].started and not versions["b"].started


async def test_a_shared_node_serves_both_consumers_and_a_stopped_request_cancels_it():
    versions, pipeline = fan_out()
    x = np.zeros((1, 4), np.float32)
    task = asyncio.ensure_future(pipeline.infer(request(x), None))
    await settle()
    versions["src"].started[0].set_result(None)
    await settle()
    assert len(versions["a"].started) == 1 and len(versions["b"].started) == 1  # both, from one src
    versions["a"].started[0].set_result(None)
    versions["b"].started[0].set_result(None)
    outputs = {o.name: o.data for o in await task}
    np.testing.assert_array_equal(outputs["a"], x + 2)
    np.testing.assert_array_equal(outputs["b"], x + 2)
    # A client that goes away while `src` runs: the request's task is cancelled, and so is `src`.
    task = asyncio.ensure_future(pipeline.infer(request(x), None))
    await settle()
    assert len(versions["src"].started) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert versions["src"].cancelled == 1


async def test_sibling_branches_reach_a_model_node_together_after_work_that_does_not_wait():
    """Each branch runs `a` (answering at once, as a custom node inline does) and then `b`: every branch
    has run `a` before any queues on `b`, so a batching model gets the branches in one batch."""
    versions = {"a": InstantVersion("a"), "b": FakeVersion("b")}
    a_runs_seen_by_b: list[int] = []
    real_infer = versions["b"].infer

    async def b_infer(*args, **kwargs):
        a_runs_seen_by_b.append(len(versions["a"].tasks))
        return await real_infer(*args, **kwargs)

    versions["b"].infer = b_infer  # type: ignore[method-assign]
    pipeline = make_pipeline(
        {
            "name": "p",
            "inputs": ["x"],
            "demultiply_count": -1,
            "nodes": [node("a", "a", ("request", "x")), node("b", "b", ("a", "y"))],
            "outputs": [{"y": {"node_name": "b", "data_item": "y"}}],
        },
        versions,
    )
    task = asyncio.ensure_future(pipeline.infer(request(np.zeros((4, 1, 4), np.float32)), None))
    await settle()
    assert a_runs_seen_by_b == [4, 4, 4, 4]
    for release in versions["b"].started:
        release.set_result(None)
    (out,) = await task
    np.testing.assert_array_equal(out.data, np.full((4, 1, 4), 2, np.float32))
