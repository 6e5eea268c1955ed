"""A served pipeline (OVMS DAG): to clients a model; inside, a graph run node by node.

A request runs each node as soon as its inputs are ready, so independent nodes and demultiplexed branches
run concurrently: each branch, and each of several inputs that come from different nodes, is awaited in an
asyncio task of its own, and a node runs inside the first task that needs it (the others that need it wait
for its result). A chain of nodes thus runs in one task, without a task and a loop turn per node (N = 1
through the bench's resize node and model, in process: 151 + 71 us of the graph's hand-overs before the
model call). A branch with siblings gives the loop one turn before it queues on a model node, so that all
siblings, each having run what comes before, reach the model's batcher together. DL model nodes go
through the model's own
ModelVersion (validation, its scheduler and batching), looked up when the node runs: a model reloaded
while a pipeline serves is picked up by the next node that needs it, and requests already queued on the
old version finish there. Custom nodes run in threads, except those whose recent executions took under
INLINE_BELOW_NS, which run on the event loop (a thread hand-off costs them more). The first node to fail
fails the request with its status and a message naming the node, and the request's other tasks are
cancelled.

Copies: a demultiplexed branch gets a view of its slice (dimension 0 of a C-contiguous array); a C
library's outputs are views of its buffers, writeable (the server owns them until they are released),
so a model node after it hands them to OpenVINO without a copy; a model's outputs go on as the arrays
OpenVINO wrote; only gathering copies (it stacks the branches). Arrays OpenVINO cannot share (read-only
views, such as a request's own bytes or what a Python node returns of its read-only inputs) are copied
once when a model node takes them, as for any request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from gateway.codecs.images import decode_images
from gateway.config.pipelines import REQUEST_NODE, NodeKind, PipelineSettings, Source
from gateway.core.errors import (
    DeadlineExceeded,
    GatewayError,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from gateway.core.records import InferInput, InferOutput, RequestedOutput, TensorSpec
from gateway.observability.statistics import ExecutionTimes, VersionStats
from gateway.pipelines.graph import GraphNode, PipelineGraph
from gateway.pipelines.node_contract import CustomNodeError
from gateway.scheduling.scheduler import WhenFull
from gateway.serving.model_version import (
    ModelVersion,
    State,
    check_input_count,
    check_shape,
    picked_outputs,
    select_outputs,
    spec_bounds,
)

log = logging.getLogger(__name__)

# OVMS reports every pipeline as version 1 and ignores the version a request names.
PIPELINE_VERSION = 1

# (model name, version or None) -> the ready version a node runs on now (GatewayError when none).
VersionResolver = Callable[[str, int | None], ModelVersion]

T = TypeVar("T")

# A custom node whose recent executions took less than this runs on the event loop: handing it to a
# thread and taking the GIL back costs more (docs/design/pipeline-execution.md).
INLINE_BELOW_NS = 200_000
# A node runs inside the task that first needs it, so a chain of nodes nests that many coroutine calls (four
# frames a node) on one stack; a graph with a longer chain than this runs each node in a task of its own, as
# Python's recursion limit (1,000 frames) would otherwise stop a long chain.
INLINE_CHAIN_LIMIT = 64
Path = tuple[int, ...]  # a branch: the slice index at each demultiplexing level, outermost first


@dataclass(eq=False, slots=True)
class Pipeline:
    name: str
    settings: PipelineSettings
    resolve: VersionResolver
    graph: PipelineGraph | None = None
    state: State = State.LOADING
    reason: str = ""
    version: int = PIPELINE_VERSION
    in_flight: int = 0
    max_batch_size: int = 0  # batching, if any, happens in the models' own schedulers
    stats: VersionStats = field(default_factory=VersionStats)
    _input_index: dict[str, int] = field(default_factory=dict)
    _output_index: dict[str, int] = field(default_factory=dict)

    def activate(self, graph: PipelineGraph) -> None:
        self.graph = graph
        self._input_index = {s.name: i for i, s in enumerate(graph.inputs)}
        self._output_index = {s.name: i for i, s in enumerate(graph.outputs)}
        self.state, self.reason = State.READY, ""

    def fail(self, reason: str) -> None:
        # Requests in flight hold the graph and finish on it.
        self.graph, self.state, self.reason = None, State.UNAVAILABLE, reason

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.inputs if self.graph else ()

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.outputs if self.graph else ()

    client_inputs = inputs

    # --- what transports ask of a servable (see ModelVersion) -------------------------------------

    def check_input_count(self, given: int) -> None:
        check_input_count(len(self.inputs), given)

    def takes_images(self, name: str) -> bool:
        return self.graph is not None and name in self.graph.images

    def refuse_if_full(self) -> None:
        """RESOURCE_EXHAUSTED now, before the request is decoded, when a model node the request feeds
        directly has no room in its queue. This is the pipeline's admission: once admitted, its nodes wait
        for room instead of being refused (a demultiplexed request of 200 images would otherwise fill a
        queue of 64 with its own branches and fail itself)."""
        graph = self.graph
        if graph is None:
            return
        for node in graph.nodes.values():
            if node.kind is NodeKind.MODEL and all(s.node == REQUEST_NODE for _, s in node.inputs):
                try:
                    self.resolve(node.model_name, node.model_version).refuse_if_full()
                except ResourceExhausted as e:
                    raise ResourceExhausted(
                        f"pipeline '{self.name}' node '{node.name}': {e.message}"
                    ) from None
                except GatewayError:
                    pass  # not ready: the node fails with that when it runs

    # --- inference ------------------------------------------------------------------------------

    async def infer(
        self,
        inputs: Sequence[InferInput],
        requested: Sequence[RequestedOutput] | None,
        priority: int = 0,
        deadline: float | None = None,
        when_full: WhenFull = WhenFull.REFUSE,
        into: Mapping[str, memoryview] | None = None,
    ) -> list[InferOutput]:
        """`into` (where the client wants outputs) is not used: a pipeline's outputs come from its nodes,
        and the transport copies them into the client's memory."""
        graph = self.graph  # a reload may replace it while this request runs
        if graph is None:
            raise Unavailable(f"pipeline '{self.name}' is not ready: {self.reason}")
        if graph.images and any(tensor.datatype == "BYTES" for tensor in inputs):
            inputs = await self._decode_images(graph, inputs)
        given = self._order_inputs(graph, inputs)
        picked = select_outputs(f"pipeline '{self.name}'", "pipeline", self._output_index, requested)
        # Admitted (see refuse_if_full): every node waits for room in its model's queue, whatever the
        # transport asked (WhenFull.REFUSE is for the admission).
        run = _Run(self.name, graph, given, self.resolve, priority, deadline, WhenFull.WAIT)
        started = time.perf_counter_ns()
        results = await run.outputs([graph.output_sources[i] for i in picked])
        # Triton's statistics for a pipeline as for an ensemble: one inference per request, its compute
        # the whole graph (each model node's own statistics show its queue and compute).
        self.stats.record_execution(ExecutionTimes(0, time.perf_counter_ns() - started, 0), 1, [0])
        return picked_outputs(graph.outputs, picked, results, requested)

    async def _decode_images(self, graph: PipelineGraph, inputs: Sequence[InferInput]) -> list[InferInput]:
        """BYTES sent to an input that takes images: decoded as the model it feeds would decode them;
        with demultiplexing at the entry, [N,H,W,C] becomes N branches of [1,H,W,C]."""
        out = []
        for tensor in inputs:
            image = graph.images.get(tensor.name)
            if image is None or tensor.datatype != "BYTES":
                out.append(tensor)
                continue
            decoded = await decode_images(image, tensor.data)
            self.stats.images_decoded += decoded.batch.shape[0]
            self.stats.image_decode_cpu_ns += decoded.cpu_ns
            batch = decoded.batch
            if graph.entry_demultiply is not None:
                batch = batch.reshape(batch.shape[0], 1, *batch.shape[1:])
            spec = graph.inputs[self._input_index[tensor.name]]
            out.append(InferInput(tensor.name, spec.datatype, batch.shape, batch, tensor.parameters))
        return out

    def _order_inputs(self, graph: PipelineGraph, inputs: Sequence[InferInput]) -> dict[str, np.ndarray]:
        """The request's inputs checked against the pipeline's (names, datatypes, shapes), once: the
        nodes' own checks then only meet tensors the graph produced."""
        given: dict[str, np.ndarray] = {}
        for tensor in inputs:
            index = self._input_index.get(tensor.name)
            if index is None:
                raise InvalidArgument(
                    f"unexpected input '{tensor.name}' for pipeline '{self.name}'; pipeline inputs: "
                    f"{', '.join(self._input_index)}"
                )
            if tensor.name in given:
                raise InvalidArgument(f"input '{tensor.name}' is given more than once")
            spec = graph.inputs[index]
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"Invalid input precision - Expected: {spec.datatype}; Actual: {tensor.datatype}; "
                    f"input name: {tensor.name}"
                )
            check_shape(spec.name, spec_bounds(spec.shape), tensor.shape)
            given[tensor.name] = tensor.data
        missing = [s.name for s in graph.inputs if s.name not in given]
        if missing:
            raise InvalidArgument(
                f"Invalid number of inputs - Expected: {len(graph.inputs)}; Actual: {len(inputs)}; "
                f"missing input(s): {', '.join(missing)}"
            )
        if graph.entry_demultiply is not None:
            sizes = {name: array.shape[0] for name, array in given.items()}
            if len(set(sizes.values())) > 1:
                detail = ", ".join(f"{n} has {s}" for n, s in sizes.items())
                raise InvalidArgument(
                    f"pipeline '{self.name}' demultiplexes its inputs on dimension 0, which must be the same "
                    f"for every input; Actual: {detail}"
                )
            if not next(iter(sizes.values())):
                raise InvalidArgument(
                    f"pipeline '{self.name}': dimension 0 of the inputs is 0: no branch to run (the "
                    "pipeline demultiplexes its inputs)"
                )
        return given


def _stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Branches gathered on a new dimension 0, without a copy where that is possible: one branch, or
    branches that are consecutive rows of one array (a batched model node's output, split by its
    scheduler into the branches' rows, in order); otherwise copied once into one array."""
    first = parts[0]
    if len(parts) == 1:
        return first[np.newaxis]
    if _consecutive(parts):
        return np.lib.stride_tricks.as_strided(
            first, (len(parts), *first.shape), (first.nbytes, *first.strides), writeable=False
        )
    return np.stack(parts)


def _consecutive(parts: Sequence[np.ndarray]) -> bool:
    """Whether `parts` are C-contiguous, equal-shaped views that follow each other in one base array."""
    first = parts[0]
    base = first.base
    if base is None or not first.flags.c_contiguous or not first.nbytes:
        return False
    start = first.ctypes.data
    for i, part in enumerate(parts):
        if (
            part.base is not base
            or part.shape != first.shape
            or part.dtype != first.dtype
            or not part.flags.c_contiguous
            or part.ctypes.data != start + i * first.nbytes
        ):
            return False
    return True


class _Run:
    """One request through the graph. Each (node, branch) runs once, in the first task that needs it;
    `_executions` holds its result (a future) for every other consumer. Tasks are made only where work
    may run side by side (`_all`), and all of them are cancelled when the request ends."""

    def __init__(
        self,
        pipeline: str,
        graph: PipelineGraph,
        inputs: dict[str, np.ndarray],
        resolve: VersionResolver,
        priority: int,
        deadline: float | None,
        when_full: WhenFull,
    ):
        self._pipeline, self._graph, self._inputs = pipeline, graph, inputs
        self._resolve, self._priority, self._deadline, self._when_full = (
            resolve,
            priority,
            deadline,
            when_full,
        )
        self._executions: dict[tuple[str, Path], asyncio.Future[dict[str, np.ndarray]]] = {}
        self._tasks: list[asyncio.Task] = []
        self._branches: dict[tuple[str, Path], int] = {}

    async def outputs(self, sources: Sequence[tuple[str, Source]]) -> list[np.ndarray]:
        try:
            return await self._all([self._gathered(source, ()) for _, source in sources])
        finally:
            for task in self._tasks:
                task.cancel()  # a failed branch stops the others (a no-op on those that ended)
            for execution in self._executions.values():
                if execution.done() and not execution.cancelled():
                    execution.exception()  # retrieved: the failure that matters was raised above

    async def _all(self, awaitables: Sequence[Awaitable[T]]) -> list[T]:
        """asyncio.gather, without a task when there is only one (most nodes have one input, and an
        undemultiplexed request one branch): each task costs about as much as a small node's work."""
        if len(awaitables) == 1:
            return [await awaitables[0]]
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        self._tasks.extend(tasks)
        return list(await asyncio.gather(*tasks))

    async def _gathered(self, source: Source, path: Path) -> np.ndarray:
        """What the response gets from `source`: every level it gathers stacked, outermost first."""
        levels = self._graph.response_levels
        if len(path) == len(levels):
            return await self._item(source, path)
        count = await self._branch_count(levels[len(path)], path)
        return _stack(await self._all([self._gathered(source, (*path, i)) for i in range(count)]))

    async def _branch_count(self, demultiplexer: str, path: Path) -> int:
        if demultiplexer == REQUEST_NODE:
            return next(iter(self._inputs.values())).shape[0]
        await self._execution(demultiplexer, path)
        return self._branches[(demultiplexer, path)]

    async def _item(self, source: Source, path: Path) -> np.ndarray:
        """The tensor `source` gives a consumer in branch `path` (as long as the source's output levels)."""
        if source.node == REQUEST_NODE:
            array = self._inputs[source.item]
            return array[path[-1]] if self._graph.entry_demultiply is not None else array
        node = self._graph.nodes[source.node]
        if node.demultiply_count is None:
            return (await self._execution(node.name, path))[source.item]
        outputs = await self._execution(node.name, path[:-1])
        return outputs[source.item][path[-1]]

    async def _execution(self, name: str, path: Path) -> dict[str, np.ndarray]:
        """Node `name`'s outputs in branch `path`: run here by the first caller, awaited by the others."""
        key = (name, path)
        shared = self._executions.get(key)
        if shared is not None:
            return await asyncio.shield(shared)  # a consumer cancelled here leaves the node to its runner
        if self._graph.longest_chain > INLINE_CHAIN_LIMIT:
            task = asyncio.ensure_future(self._run_node(self._graph.nodes[name], path))
            self._executions[key] = task
            self._tasks.append(task)
            return await asyncio.shield(task)
        shared = self._executions[key] = asyncio.get_running_loop().create_future()
        try:
            outputs = await self._run_node(self._graph.nodes[name], path)
        except asyncio.CancelledError:
            shared.cancel()
            raise
        except BaseException as e:
            shared.set_exception(e)
            raise
        shared.set_result(outputs)
        return outputs

    async def _node_inputs(self, node: GraphNode, path: Path) -> dict[str, np.ndarray]:
        if node.gather_from is None:
            # Inputs from one node at most (a model after a node that gives it two tensors) need no task
            # each: the first runs that node, the rest find its outputs ready.
            if len({source.node for _, source in node.inputs} - {REQUEST_NODE}) <= 1:
                arrays = [await self._item(source, path) for _, source in node.inputs]
            else:
                arrays = await self._all([self._item(source, path) for _, source in node.inputs])
        else:
            count = await self._branch_count(node.gather_from, path)

            async def stacked(source: Source) -> np.ndarray:
                return _stack(await self._all([self._item(source, (*path, i)) for i in range(count)]))

            arrays = await self._all([stacked(source) for _, source in node.inputs])
        return {name: array for (name, _), array in zip(node.inputs, arrays, strict=True)}

    async def _run_node(self, node: GraphNode, path: Path) -> dict[str, np.ndarray]:
        inputs = await self._node_inputs(node, path)
        where = f"pipeline '{self._pipeline}' node '{node.name}'"
        try:
            if node.kind is NodeKind.MODEL:
                if self._has_siblings(node, path):
                    # Let the sibling branches reach this node too before it is queued: a branch runs its
                    # nodes one after another in its task, so without the turn each branch's custom node
                    # (0.2 ms inline) would keep the others from the model's batcher, whose delay then
                    # went out on 5 of 16 branches (3 executions instead of one, the bench at N = 16).
                    await asyncio.sleep(0)
                produced = await self._run_model(node, inputs)
            else:
                produced = await self._run_custom(node, inputs)
        except GatewayError as e:
            raise type(e)(f"{where}: {e.message}") from None
        except CustomNodeError as e:
            log.warning("%s failed: %s", where, e)
            raise InternalError(f"{where}: {e}") from None
        outputs = {alias: produced[item] for alias, item in node.aliases.items()}
        if node.demultiply_count is not None:
            self._branches[(node.name, path)] = self._split_count(where, node, outputs)
        return outputs

    def _has_siblings(self, node: GraphNode, path: Path) -> bool:
        """Whether branch `path` of `node` has others beside it (its innermost level split in two or more)."""
        if not node.levels:
            return False
        level, parent = node.levels[-1], path[:-1]
        if level == REQUEST_NODE:
            return next(iter(self._inputs.values())).shape[0] > 1
        return self._branches[(level, parent)] > 1

    async def _run_model(self, node: GraphNode, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        version = self._resolve(node.model_name, node.model_version)
        request = [
            InferInput(name, node.input_specs[name].datatype, tuple(array.shape), array)
            for name, array in inputs.items()
        ]
        wanted = [RequestedOutput(item) for item in dict.fromkeys(node.aliases.values())]
        outputs = await version.infer(request, wanted, self._priority, self._deadline, self._when_full)
        return {out.name: out.data for out in outputs}

    async def _run_custom(self, node: GraphNode, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise DeadlineExceeded("the request's deadline passed before this node could run")
        assert node.instance is not None  # CUSTOM nodes get one when the graph is built
        for name, array in inputs.items():
            spec = node.input_specs[name]
            check_shape(name, spec_bounds(spec.shape), tuple(array.shape))
        typical = node.instance.times.typical_ns()
        if typical is not None and typical < INLINE_BELOW_NS:
            return node.instance.execute(inputs)
        return await asyncio.to_thread(node.instance.execute, inputs)

    def _split_count(self, where: str, node: GraphNode, outputs: dict[str, np.ndarray]) -> int:
        sizes = {alias: array.shape[0] if array.ndim else None for alias, array in outputs.items()}
        distinct = set(sizes.values())
        if None in distinct or len(distinct) != 1:
            detail = ", ".join(f"{a}: {s}" for a, s in sizes.items())
            raise InternalError(
                f"{where}: demultiplexing needs the same dimension 0 on every output; got {detail}"
            )
        count = distinct.pop()
        assert count is not None
        if node.demultiply_count is not None and node.demultiply_count > 0 and count != node.demultiply_count:
            raise InternalError(
                f"{where}: demultiply_count is {node.demultiply_count} but the outputs have dimension 0 "
                f"of {count}"
            )
        if count == 0:
            raise InvalidArgument(f"{where}: produced 0 branches to demultiplex; the request stops here")
        return count


# What a request is routed to: a model version or a pipeline (the same calls serve both).
Servable = ModelVersion | Pipeline
