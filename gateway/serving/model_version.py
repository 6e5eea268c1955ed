"""One served model version: its compiled model, its metadata, and request validation against it."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.codecs.images import ImageInput, decode_images, image_input
from gateway.config.settings import ModelSettings
from gateway.core.errors import ConfigError, InvalidArgument, ResourceExhausted, Unavailable
from gateway.core.records import InferInput, InferOutput, RequestedOutput, TensorSpec
from gateway.observability.statistics import ExecutionTimes, VersionStats
from gateway.scheduling.scheduler import Executor, ModelScheduler, WhenFull
from gateway.serving.remote_store import Download

# What the model config reports as max_batch_size when the batch dimension has no upper bound: the
# gateway takes any batch size then, and clients such as perf_analyzer only compare their -b against it.
UNBOUNDED_BATCH = 2**31 - 1


def batch_capacity(inputs, input_bounds, outputs) -> int:
    """Triton's max_batch_size for a model: > 0 when dimension 0 of every input and output is dynamic."""
    if not inputs or not all(s.shape and s.shape[0] == -1 for s in (*inputs, *outputs)):
        return 0
    limits = [bounds[0][1] for bounds in input_bounds if bounds[0][1] >= 0]
    return min(limits) if limits else UNBOUNDED_BATCH


def apply_batching(settings: ModelSettings, inputs, input_bounds, outputs):
    """The client's view of a model under dynamic batching: dimension 0 of every input and output is the
    batch, 1..max_batch_size. Returns (inputs, bounds, outputs, pad_to); pad_to is the static batch size a
    reshaped model runs at (partial batches are padded), None when dimension 0 is dynamic."""
    size = settings.max_batch_size
    pad_to = None
    for spec, bounds in zip(inputs, input_bounds, strict=True):
        low, high = bounds[0]
        if low == high:
            pad_to = low
        elif high >= 0 and high < size:
            raise ConfigError(
                f"model '{settings.name}': field 'max_batch_size' = {size}: input '{spec.name}' takes at "
                f"most {high} in dimension 0"
            )
    for spec in outputs:
        if not spec.shape or spec.shape[0] not in (-1, pad_to if pad_to is not None else -1):
            raise ConfigError(
                f"model '{settings.name}': field 'max_batch_size' = {size}: output '{spec.name}' (shape "
                f"{_fmt(spec.shape)}) has no batch dimension 0, so a batch could not be split back"
            )

    def batched(spec: TensorSpec) -> TensorSpec:
        return TensorSpec(spec.name, spec.datatype, (-1, *spec.shape[1:]))

    bounds = tuple(((1, size), *b[1:]) for b in input_bounds)
    return tuple(map(batched, inputs)), bounds, tuple(map(batched, outputs)), pad_to


def client_view(
    settings: ModelSettings, inputs: Sequence[TensorSpec], support: Sequence[ImageInput | str]
) -> tuple[TensorSpec, ...]:
    """The inputs as metadata shows them: the `image_inputs` setting's as BYTES [N] (N: the batch size
    when static, else -1), so that clients which build requests from metadata (perf_analyzer) send
    encoded images. ConfigError for a name that is no input, or an input that takes no images."""
    names = {spec.name for spec in inputs}
    for name in settings.image_inputs:
        if name not in names:
            raise ConfigError(
                f"model '{settings.name}': field 'image_inputs': no input '{name}'; "
                f"inputs: {', '.join(sorted(names))}"
            )
    out = []
    for spec, how in zip(inputs, support, strict=True):
        if spec.name not in settings.image_inputs:
            out.append(scalar_view(settings, spec))
        elif isinstance(how, str):
            raise ConfigError(f"model '{settings.name}': field 'image_inputs': {how}")
        else:
            low, high = how.batch
            out.append(TensorSpec(spec.name, "BYTES", (low if low == high else -1,)))
    return tuple(out)


def scalar_view(settings: ModelSettings, spec: TensorSpec) -> TensorSpec:
    """A rank-0 tensor as the `scalar_shape` setting shows it to clients: `[]`, or Triton's `[1]`."""
    if spec.shape or not settings.scalar_shape:
        return spec
    return TensorSpec(spec.name, spec.datatype, settings.scalar_shape)


class State(enum.Enum):
    # Triton's repository-index states, which the index API reports verbatim.
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


def _fmt(shape: Iterable[int | str]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# Each dimension's inclusive (low, high) bounds; high -1 = unbounded.
Bounds = tuple[tuple[int, int], ...]


def check_shape(name: str, bounds: Bounds, shape: tuple[int, ...]) -> None:
    """A request shape against an input's bounds: same rank, every dimension inside its range."""
    ok = len(shape) == len(bounds) and all(
        lo <= d and (hi < 0 or d <= hi) for d, (lo, hi) in zip(shape, bounds, strict=True)
    )
    if not ok:
        expected = _fmt(
            lo if lo == hi else (-1 if hi < 0 and lo == 0 else f"{lo}:{'' if hi < 0 else hi}")
            for lo, hi in bounds
        )
        raise InvalidArgument(
            f"Invalid input shape - Expected: {expected}; Actual: {_fmt(shape)}; input name: {name}"
        )


def spec_bounds(shape: Iterable[int]) -> Bounds:
    """The bounds a metadata shape allows: a static dimension its size, -1 any size."""
    return tuple((0, -1) if d < 0 else (d, d) for d in shape)


def check_input_count(expected: int, given: int) -> None:
    """Before decoding: a request with more inputs than the servable has is refused before any of its
    tensors is decoded (fewer are reported with the names missing, once inputs are matched)."""
    if given > expected:
        raise InvalidArgument(f"Invalid number of inputs - Expected: {expected}; Actual: {given}")


def select_outputs(
    owner: str, kind: str, index: Mapping[str, int], requested: Sequence[RequestedOutput] | None
) -> list[int]:
    """The requested outputs' positions (every output, in order, when none is named). `owner` names the
    model version or pipeline in errors, `kind` is "model" or "pipeline"; `index`: output name -> position."""
    if not requested:
        return list(range(len(index)))
    picked: list[int] = []
    for out in requested:
        position = index.get(out.name)
        if position is None:
            raise InvalidArgument(
                f"unexpected output '{out.name}' for {owner}; {kind} outputs: {', '.join(index)}"
            )
        if position in picked:
            raise InvalidArgument(f"output '{out.name}' is requested more than once")
        picked.append(position)
    return picked


def picked_outputs(
    specs: Sequence[TensorSpec],
    picked: Sequence[int],
    arrays: Sequence[np.ndarray],
    requested: Sequence[RequestedOutput] | None,
) -> list[InferOutput]:
    """The response's outputs: the picked specs with their arrays (in picked order) and each requested
    output's parameters."""
    outputs = []
    for position, (index, array) in enumerate(zip(picked, arrays, strict=True)):
        spec = specs[index]
        params = dict(requested[position].parameters) if requested else {}
        outputs.append(InferOutput(spec.name, spec.datatype, tuple(array.shape), array, params))
    return outputs


@dataclass(eq=False, slots=True)
class ModelVersion:
    name: str
    version: int
    settings: ModelSettings
    path: str
    state: State = State.LOADING
    reason: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    input_bounds: tuple[tuple[tuple[int, int], ...], ...] = ()
    scheduler: ModelScheduler | None = None
    max_batch_size: int = 0  # > 0: dimension 0 is the batch (Triton's convention)
    streams: int = 0  # OpenVINO execution streams (ovms_streams)
    in_flight: int = 0  # requests inside the gateway for this version (ovms_current_requests)
    load_seconds: float = 0.0  # read + compile (or cache import) time
    cache_result: str = ""  # "hit" (imported a compiled blob), "miss" (compiled and cached), "" (no cache)
    download: Download | None = None  # what fetching it from object storage cost; None: a local folder
    stats: VersionStats = field(default_factory=VersionStats)
    # The metrics recorder: (name, version, times of one execution, queue time of each of its requests).
    on_execution: Callable[[str, str, ExecutionTimes, list[int]], None] | None = None
    # Per input: how it takes encoded images, or why it does not (images.py).
    image_support: tuple[ImageInput | str, ...] = ()
    # The inputs as clients are told of them (metadata, Triton config): `inputs`, except that an input
    # named in the `image_inputs` setting is shown as what clients send it, BYTES [N].
    client_inputs: tuple[TensorSpec, ...] = ()
    client_outputs: tuple[TensorSpec, ...] = ()  # `outputs`, rank-0 ones as `scalar_shape` shows them
    _input_index: dict[str, int] = field(default_factory=dict)
    _output_index: dict[str, int] = field(default_factory=dict)
    # Some input is rank 4 and not BYTES: BYTES sent to it are images (or refused saying why). For other
    # models a BYTES input meets order_inputs' datatype check directly, with no per-request scan here.
    _may_take_images: bool = False

    def describe(self, inputs, input_bounds, outputs, layouts: Sequence[str] = ()) -> None:
        """The client's view of the compiled model (after batching is applied), before it serves.
        `layouts`: each input's OpenVINO layout ('[N,H,W,C]'; '[...]' when none is set)."""
        self.inputs, self.input_bounds, self.outputs = inputs, input_bounds, outputs
        self._input_index = {s.name: i for i, s in enumerate(inputs)}
        self._output_index = {s.name: i for i, s in enumerate(outputs)}
        layouts = layouts or ["[...]"] * len(inputs)
        self.image_support = tuple(
            image_input(spec, bounds, layout)
            for spec, bounds, layout in zip(inputs, input_bounds, layouts, strict=True)
        )
        self.client_inputs = client_view(self.settings, inputs, self.image_support)
        self.client_outputs = tuple(scalar_view(self.settings, spec) for spec in outputs)
        self._may_take_images = any(len(s.shape) == 4 and s.datatype != "BYTES" for s in inputs)
        self.max_batch_size = self.settings.max_batch_size or batch_capacity(inputs, input_bounds, outputs)

    def activate(self, scheduler: ModelScheduler) -> None:
        self.scheduler = scheduler
        self.state, self.reason = State.READY, ""

    def fail(self, reason: str) -> None:
        # Requests already queued keep their own reference to the scheduler and are answered.
        if self.scheduler is not None:
            self.scheduler.close()
        self.state, self.reason, self.scheduler = State.UNAVAILABLE, reason, None

    @property
    def executor(self) -> Executor | None:
        return self.scheduler.executor if self.scheduler is not None else None

    def record_execution(self, rows: int, times: ExecutionTimes, queue_ns: list[int]) -> None:
        """The scheduler's callback, once per execution."""
        self.stats.record_execution(times, rows, queue_ns)
        if self.on_execution is not None:
            self.on_execution(self.name, str(self.version), times, queue_ns)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def refuse_if_full(self) -> None:
        """RESOURCE_EXHAUSTED now, before the request is decoded, when the queue has no room (the
        scheduler checks again when the request joins it)."""
        scheduler = self.scheduler
        if scheduler is not None and not scheduler.has_room():
            raise ResourceExhausted(
                f"{scheduler.label}: the queue is full ({scheduler.max_queue_size} requests waiting); "
                "retry later"
            )

    def takes_images(self, name: str) -> bool:
        index = self._input_index.get(name)
        return index is not None and isinstance(self.image_support[index], ImageInput)

    async def decode_encoded_images(self, inputs: Sequence[InferInput]) -> list[InferInput]:
        """BYTES inputs sent to a model input that is not BYTES are encoded images: decoded (off the
        event loop) into the input's own datatype and shape, or refused saying why the input takes none."""
        out = []
        for given in inputs:
            index = self._input_index.get(given.name)
            if given.datatype != "BYTES" or index is None or self.inputs[index].datatype == "BYTES":
                out.append(given)  # order_inputs judges it
                continue
            image = self.image_support[index]
            if isinstance(image, str):
                raise InvalidArgument(
                    f"BYTES sent to input '{given.name}', which takes no encoded images: {image}"
                )
            decoded = await decode_images(image, given.data)
            self.stats.images_decoded += decoded.batch.shape[0]
            self.stats.image_decode_cpu_ns += decoded.cpu_ns
            out.append(
                InferInput(
                    given.name,
                    self.inputs[index].datatype,
                    decoded.batch.shape,
                    decoded.batch,
                    given.parameters,
                )
            )
        return out

    def check_input_count(self, given: int) -> None:
        check_input_count(len(self.inputs), given)

    def order_inputs(self, inputs: Sequence[InferInput]) -> tuple[list[np.ndarray], int]:
        """Check the request's inputs against the model; return their arrays in model input order and
        the request's batch size (its row count: dimension 0 when the model batches, else 1).

        This is where a request's invariants enter, once: names, datatypes, shapes, and, when dimension 0
        is the batch (max_batch_size > 0), one batch size shared by every input, 1..max_batch_size. The
        scheduler's batching key, row counts, padding and output split rely on that last one."""
        ordered: list[np.ndarray | None] = [None] * len(self.inputs)
        for given in inputs:
            index = self._input_index.get(given.name)
            if index is None:
                raise InvalidArgument(
                    f"unexpected input '{given.name}' for model '{self.name}' version {self.version}; "
                    f"model inputs: {', '.join(self._input_index)}"
                )
            if ordered[index] is not None:
                raise InvalidArgument(f"input '{given.name}' is given more than once")
            spec = self.inputs[index]
            if given.datatype != spec.datatype:
                raise InvalidArgument(
                    f"Invalid input precision - Expected: {spec.datatype}; Actual: {given.datatype}; "
                    f"input name: {given.name}"
                )
            data = given.data
            if not spec.shape and given.shape == (1,):
                # Triton's form of a scalar (config dims [1], reshape []): one element, sent as [1].
                data = data.reshape(())
            else:
                check_shape(spec.name, self.input_bounds[index], given.shape)
            ordered[index] = data
        missing = [s.name for s, a in zip(self.inputs, ordered, strict=True) if a is None]
        if missing:
            raise InvalidArgument(
                f"Invalid number of inputs - Expected: {len(self.inputs)}; Actual: {len(inputs)}; "
                f"missing input(s): {', '.join(missing)}"
            )
        arrays: list[np.ndarray] = ordered  # type: ignore[assignment]  # none is None past the check
        if not self.max_batch_size:
            return arrays, 1
        return arrays, self._batch_size(arrays)

    def _batch_size(self, arrays: list[np.ndarray]) -> int:
        """Triton's rule where dimension 0 is the batch: every input has the same one, 1..max_batch_size.
        (Each array has rank >= 1 here: every input's metadata shape starts with the batch, -1.)"""
        sizes = [a.shape[0] for a in arrays]
        rows = sizes[0]
        if any(size != rows for size in sizes):
            given = ", ".join(f"{s.name} has {size}" for s, size in zip(self.inputs, sizes, strict=True))
            raise InvalidArgument(
                f"Invalid batch size - every input must have the same dimension 0 (the batch size); "
                f"Actual: {given}; model '{self.name}' version {self.version}"
            )
        if not 1 <= rows <= self.max_batch_size:
            expected = (
                "at least 1" if self.max_batch_size == UNBOUNDED_BATCH else f"1 to {self.max_batch_size}"
            )
            names = ", ".join(s.name for s in self.inputs)
            raise InvalidArgument(
                f"Invalid batch size - Expected: {expected}; Actual: {rows} (dimension 0 of {names}); "
                f"model '{self.name}' version {self.version}"
            )
        return rows

    def select_outputs(self, requested: Sequence[RequestedOutput] | None) -> list[int]:
        owner = f"model '{self.name}' version {self.version}"
        return select_outputs(owner, "model", self._output_index, requested)

    async def infer(
        self,
        inputs: Sequence[InferInput],
        requested: Sequence[RequestedOutput] | None,
        priority: int = 0,
        deadline: float | None = None,
        when_full: WhenFull = WhenFull.REFUSE,
        into: Mapping[str, memoryview] | None = None,
    ) -> list[InferOutput]:
        """Validate, queue and run one request. `priority`: Triton's level (1 highest, 0 default);
        `deadline`: time.monotonic after which the request is dropped if it is still queued; `into`: output
        name -> memory the client wants it written in (its shared-memory region), where it can be."""
        scheduler = self.scheduler  # an unload may clear it while this request runs
        if scheduler is None:
            raise Unavailable(f"model '{self.name}' version {self.version} is not ready: {self.reason}")
        if self._may_take_images and any(given.datatype == "BYTES" for given in inputs):
            inputs = await self.decode_encoded_images(inputs)
        arrays, rows = self.order_inputs(inputs)
        picked = self.select_outputs(requested)
        targets = (
            {self._output_index[n]: m for n, m in into.items() if n in self._output_index} if into else None
        )
        results, _, _ = await scheduler.submit(arrays, rows, priority, deadline, when_full, targets)
        if self.settings.scalar_shape:  # rank-0 outputs as the metadata shows them
            results = [r.reshape(self.settings.scalar_shape) if r.ndim == 0 else r for r in results]
        return picked_outputs(self.outputs, picked, [results[i] for i in picked], requested)
