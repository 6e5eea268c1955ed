"""OpenVINO: read, reshape and compile a model; run batches on a pool of infer requests.

The executor starts each inference with start_async() from the event loop and takes the outputs in
OpenVINO's completion callback: no thread of ours between the loop and OpenVINO's stream threads. OpenVINO's
Python binding never calls the callback when inference itself fails, so runs in flight are polled for that,
and the client gets INTERNAL instead of a hang. Why, and why outputs are bound where they are:
docs/design/output-binding.md.
"""

from __future__ import annotations

import asyncio
import math
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter_ns, thread_time_ns
from typing import Any

import numpy as np
import openvino as ov

from gateway.config.settings import ModelSettings
from gateway.core.datatypes import BY_NAME, from_openvino
from gateway.core.errors import ConfigError, InternalError
from gateway.core.records import TensorSpec
from gateway.observability.statistics import ExecutionTimes

_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")


def device_names(target_device: str) -> list[str]:
    """The physical devices a device string names: "AUTO:GPU.1,CPU" -> ["GPU.1", "CPU"]."""
    prefix, _, rest = target_device.partition(":")
    if prefix.upper() not in _VIRTUAL_DEVICES:
        return [target_device]
    if not rest:
        return []  # "AUTO" alone lets OpenVINO pick among what it has
    names = []
    for part in rest.split(","):
        part = re.sub(r"\(\d+\)$", "", part.strip())  # BATCH:CPU(4)
        if part:
            names.extend(device_names(part))
    return names


def check_device(core: ov.Core, model_name: str, target_device: str) -> None:
    available = core.available_devices
    for name in device_names(target_device):
        bare = name.split(".")[0]
        if name not in available and not any(a == bare or a.startswith(bare + ".") for a in available):
            if name.lstrip("-") in available:  # AUTO:-CPU excludes a device
                continue
            raise ConfigError(
                f"model '{model_name}': field 'target_device' = \"{target_device}\": device '{name}' is not "
                f"available; available devices: {', '.join(available) or 'none'}"
            )


def _dims_to_partial(dims) -> ov.PartialShape:
    out = []
    for d in dims:
        if isinstance(d, tuple):
            out.append(ov.Dimension(d[0], d[1]))
        else:
            out.append(ov.Dimension(d))
    return ov.PartialShape(out)


def read_model(core: ov.Core, path: str, settings: ModelSettings) -> ov.Model:
    """Read a model file and apply the settings' layout, shape and batch size."""
    model = core.read_model(path)
    _apply_layout(model, settings)
    if settings.shape is not None:
        if isinstance(settings.shape, dict):
            names = {_port_name(p, i, "input") for i, p in enumerate(model.inputs)}
            unknown = set(settings.shape) - names
            if unknown:
                raise ConfigError(
                    f"model '{settings.name}': field 'shape': unknown input(s) {sorted(unknown)}; "
                    f"inputs are {sorted(names)}"
                )
            model.reshape({k: _dims_to_partial(v) for k, v in settings.shape.items()})
        else:
            if len(model.inputs) != 1:
                raise ConfigError(
                    f"model '{settings.name}': field 'shape': a single shape needs a model with one input; "
                    f"this one has {len(model.inputs)}: give a shape per input name"
                )
            model.reshape(_dims_to_partial(settings.shape))
    if settings.batch_size is not None:
        try:
            ov.set_batch(model, settings.batch_size)
        except Exception as e:  # OpenVINO explains which input has no batch dimension
            raise ConfigError(
                f"model '{settings.name}': field 'batch_size' = {settings.batch_size}: cannot set it: {e}"
            ) from None
    if settings.max_batch_size:
        _reshape_static_batch(model, settings)
    return model


def _reshape_static_batch(model: ov.Model, settings: ModelSettings) -> None:
    """Dynamic batching on a model whose dimension 0 is static: reshape it once to max_batch_size;
    the scheduler pads partial batches. A dynamic dimension 0 stays as it is."""
    size = settings.max_batch_size
    shapes = {}
    for i, port in enumerate(model.inputs):
        pshape = port.get_partial_shape()
        if pshape.rank.is_dynamic or pshape.rank.get_length() == 0:
            raise ConfigError(
                f"model '{settings.name}': field 'max_batch_size' = {size}: input "
                f"'{_port_name(port, i, 'input')}' has no dimension 0 to batch along"
            )
        if pshape[0].is_static and pshape[0].get_length() != size:
            dims = list(pshape)
            dims[0] = ov.Dimension(size)
            shapes[port] = ov.PartialShape(dims)
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as e:
            raise ConfigError(
                f"model '{settings.name}': field 'max_batch_size' = {size}: cannot reshape dimension 0 "
                f"to it: {_first_line(e)}"
            ) from None


_COLOR_FORMATS = {
    "RGB": ov.preprocess.ColorFormat.RGB,
    "BGR": ov.preprocess.ColorFormat.BGR,
    "GRAY": ov.preprocess.ColorFormat.GRAY,
    "NV12": ov.preprocess.ColorFormat.NV12_SINGLE_PLANE,
    "NV12_2": ov.preprocess.ColorFormat.NV12_TWO_PLANES,
    "I420": ov.preprocess.ColorFormat.I420_SINGLE_PLANE,
    "I420_3": ov.preprocess.ColorFormat.I420_THREE_PLANES,
}
# The planes a multi-plane format splits an input into (OpenVINO names the new inputs "<input>/<plane>").
_PLANES = {"NV12_2": ["y", "uv"], "I420_3": ["y", "u", "v"]}


def _apply_layout(model: ov.Model, settings: ModelSettings) -> None:
    """OVMS's layout (`target:source`) and, on the inputs that have one, its preprocessing, compiled into
    the model with one PrePostProcessor in OVMS's order: colour, precision, mean, scale. Clients then send
    what the tensor side says (e.g. uint8 NHWC RGB), and model metadata reports it."""
    if settings.layout is None:
        return
    layouts = settings.layout
    if isinstance(layouts, str):
        layouts = {_port_name(p, i, "input"): layouts for i, p in enumerate(model.inputs)}
    ppp = ov.preprocess.PrePostProcessor(model)
    pre = settings.preprocessing
    for name, text in layouts.items():
        target, _, source = text.partition(":")
        try:
            port = ppp.input(name)
        except Exception:
            raise ConfigError(f"model '{settings.name}': field 'layout': unknown input '{name}'") from None
        if source:  # OVMS's "target:source": clients send `target`, the model wants `source`
            port.tensor().set_layout(ov.Layout(target))
            port.model().set_layout(ov.Layout(source))
        else:
            port.model().set_layout(ov.Layout(target))
        if pre is not None:
            _preprocess(port, pre)
    try:
        ppp.build()
    except Exception as e:  # OpenVINO says which step does not fit the input (e.g. 4 means for 3 channels)
        raise ConfigError(
            f"model '{settings.name}': layout / preprocessing cannot be applied: {_first_line(e)}"
        ) from None


def _preprocess(port, pre) -> None:
    if pre.color_format is not None:
        target, source = pre.color_format
        if target in _PLANES:
            port.tensor().set_color_format(_COLOR_FORMATS[target], _PLANES[target])
        else:
            port.tensor().set_color_format(_COLOR_FORMATS[target])
        if source is not None and source != target:
            port.preprocess().convert_color(_COLOR_FORMATS[source])
    if pre.precision is not None:
        target, source = pre.precision
        port.tensor().set_element_type(BY_NAME[target].openvino)
        if source is not None:
            port.preprocess().convert_element_type(BY_NAME[source].openvino)
        elif pre.mean is not None or pre.scale is not None:
            port.preprocess().convert_element_type()  # to the model's type, before arithmetic on it
    if pre.mean is not None:
        port.preprocess().mean(list(pre.mean) if len(pre.mean) > 1 else pre.mean[0])
    if pre.scale is not None:
        port.preprocess().scale(list(pre.scale) if len(pre.scale) > 1 else pre.scale[0])


def _port_name(port, index: int, kind: str) -> str:
    names = port.get_names()
    if names:
        # Prefer the name OpenVINO reports first for stable metadata; sets are unordered.
        return port.get_any_name()
    return f"{kind}_{index}"


def _spec(port, index: int, kind: str) -> tuple[TensorSpec, tuple[tuple[int, int], ...]]:
    """Metadata for a port plus each dimension's (min, max) bounds (max -1 = unbounded)."""
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic:
        raise ConfigError(
            f"{kind} '{_port_name(port, index, kind)}' has a dynamic rank, which clients cannot describe"
        )
    dims, bounds = [], []
    for d in pshape:
        if d.is_static:
            dims.append(d.get_length())
            bounds.append((d.get_length(), d.get_length()))
        else:
            dims.append(-1)
            bounds.append((d.get_min_length(), d.get_max_length()))
    datatype = from_openvino(port.get_element_type()).name
    return TensorSpec(_port_name(port, index, kind), datatype, tuple(dims)), tuple(bounds)


def port_layouts(ports: Sequence) -> list[str]:
    """Each port's layout as OpenVINO prints it ('[N,H,W,C]'; '[...]' when none is set)."""
    return [str(ov.layout_helpers.get_layout(port)) for port in ports]


def port_specs(ports: Sequence, kind: str):
    specs, bounds = [], []
    for i, port in enumerate(ports):
        s, b = _spec(port, i, kind)
        specs.append(s)
        bounds.append(b)
    return tuple(specs), tuple(bounds)


# An output at least this large is written by OpenVINO straight into a fresh array of ours (bound with
# set_output_tensor before the run) instead of being copied out of the infer request's own tensor after it;
# below it, a copy costs less than the binding.
BIND_OUTPUT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _OutputBinding:
    """How to allocate a bound output: its static shape, or its shape after dimension 0 (the batch)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    batched: bool  # dimension 0 is the run's row count, `shape` the rest

    def allocate(self, rows: int) -> np.ndarray:
        return np.empty((rows, *self.shape) if self.batched else self.shape, self.dtype)


def _output_binding(port, datatype: str, batch_rows: bool) -> _OutputBinding | None:
    """How an output can be allocated before the run: its shape is static, or `[rows, ...]` with batching
    on; None when it cannot (or its type is not numpy memory)."""
    if datatype in ("BYTES", "BF16"):
        return None  # string tensors are not numpy memory; BF16 has no numpy type to share
    dtype = _numpy_dtype(port)
    pshape = port.get_partial_shape()
    if dtype is None or pshape.rank.is_dynamic:
        return None
    dims = [d.get_length() if d.is_static else -1 for d in pshape]
    if -1 not in dims:
        return _OutputBinding(dtype, tuple(dims), False)
    if batch_rows and dims and dims[0] == -1 and -1 not in dims[1:]:
        return _OutputBinding(dtype, tuple(dims[1:]), True)
    return None


def _worth_binding(binding: _OutputBinding) -> bool:
    """A fresh array is bound only for a large output (see BIND_OUTPUT_BYTES); a client's region always."""
    return math.prod(binding.shape) * binding.dtype.itemsize >= BIND_OUTPUT_BYTES


class InferExecutor:
    """A pool of OpenVINO infer requests on one compiled model. The scheduler takes one, runs a batch on it
    with start_async() (the event loop only hands the inputs over; OpenVINO's stream threads compute, and
    the completion callback takes the outputs), and gives it back.

    Copies of a tensor byte here: an input shared with OpenVINO when its array is writable (REST bodies),
    else copied once into OpenVINO's tensor (gRPC's read-only message bytes); a batch of several requests
    is copied once into the batch. A large output is written by OpenVINO into our array (no copy); a small
    one, or one whose shape is not known before the run, is copied once out of the infer request (its memory
    is the next run's; binding a fresh tensor for OpenVINO to size measured slower than the copy), so on
    gRPC, which joins the outputs into the message, those take two (docs/design/output-binding.md).

    `batch_rows`: dimension 0 of every output is the run's row count (dynamic batching is on), so such
    outputs can be allocated before the run."""

    def __init__(
        self,
        compiled: ov.CompiledModel,
        nireq: int,
        input_types: Sequence[str],
        output_types: Sequence[str],
        label: str = "",
        batch_rows: bool = False,
    ):
        self._loop = asyncio.get_running_loop()
        self._idle: list[ov.InferRequest] = []
        self._runs: dict[int, _Run] = {}  # id(request) -> the run in flight on it
        me = weakref.ref(self)  # the callback must not keep a retired executor alive
        for _ in range(nireq):
            request = compiled.create_infer_request()
            request.set_callback(_on_completed, (me, id(request)))
            self._idle.append(request)
        self.nireq = nireq
        self._input_types = tuple(input_types)
        self._input_dtypes = tuple(_numpy_dtype(port) for port in compiled.inputs)
        self._output_types = tuple(output_types)
        self._bindings = tuple(
            _output_binding(port, datatype, batch_rows)
            for port, datatype in zip(compiled.outputs, output_types, strict=True)
        )
        self._worth = tuple(b is not None and _worth_binding(b) for b in self._bindings)
        # Only batches use threads: their inputs are copied into one array off the event loop.
        self._threads = ThreadPoolExecutor(max_workers=nireq, thread_name_prefix=f"batch-{label}")
        self._sweep_timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return self.nireq - len(self._idle)

    def take(self) -> ov.InferRequest:
        return self._idle.pop()

    def give_back(self, request: ov.InferRequest) -> None:
        self._idle.append(request)

    def _feeds(self, parts: Sequence[Sequence[np.ndarray]], pad_to: int | None) -> dict:
        if len(parts) == 1 and (pad_to is None or parts[0][0].shape[0] == pad_to):
            arrays = parts[0]
        else:  # one copy of each request's rows into the batch
            arrays = [_stack([p[i] for p in parts], pad_to) for i in range(len(self._input_types))]
        types = zip(arrays, self._input_types, self._input_dtypes, strict=True)
        return {i: _to_tensor(a, t, d) for i, (a, t, d) in enumerate(types)}

    async def execute(
        self,
        request: ov.InferRequest,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None = None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        """Infer the concatenation of `parts` (each a request's inputs, in model input order) along
        dimension 0, padded to `pad_to` rows for a static-batch model; outputs in model output order.
        `into`: output index -> memory the output is wanted in (a client's shared-memory region): bound for
        OpenVINO to write into where the shape is known before the run, else the output is copied there
        once; the output array returned is then a view of that memory."""
        started = perf_counter_ns()
        try:
            if len(parts) == 1:
                feeds = self._feeds(parts, pad_to)
            else:
                feeds = await self._loop.run_in_executor(self._threads, self._feeds, parts, pad_to)
            bound = self._bind_outputs(request, parts, pad_to, into)
            run = _Run(
                self._loop.create_future(), request, feeds, bound, into or {}, started, perf_counter_ns()
            )
            self._runs[id(request)] = run
            start_with_tensors(request, feeds)
        except Exception as e:
            self._runs.pop(id(request), None)
            raise _inference_failed(e) from e
        if self._sweep_timer is None:
            self._sweep_timer = self._loop.call_later(_SWEEP_S, self._sweep)
        try:
            return await run.future
        finally:
            self._runs.pop(id(request), None)

    def _bind_outputs(
        self,
        request: ov.InferRequest,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None,
        into: Mapping[int, memoryview] | None = None,
    ) -> dict[int, np.ndarray]:
        """Arrays for the outputs OpenVINO can write into directly: the memory `into` names for them when
        it is large enough, else fresh ones for large outputs (see BIND_OUTPUT_BYTES)."""
        bound: dict[int, np.ndarray] = {}
        rows = 0
        for index, binding in enumerate(self._bindings):
            if binding is None:
                continue
            target = into.get(index) if into else None
            if target is None and not self._worth[index]:
                continue
            if binding.batched and not rows:
                rows = pad_to or sum(p[0].shape[0] for p in parts)
            shape = (rows, *binding.shape) if binding.batched else binding.shape
            array = _view_of(target, binding.dtype, shape) if target is not None else None
            if array is None:
                if not self._worth[index]:
                    continue
                array = binding.allocate(rows)
            request.set_output_tensor(index, ov.Tensor(array, shared_memory=True))
            bound[index] = array
        return bound

    def run_inline(
        self,
        request: ov.InferRequest,
        parts: Sequence[Sequence[np.ndarray]],
        pad_to: int | None = None,
        into: Mapping[int, memoryview] | None = None,
    ) -> tuple[list[np.ndarray], ExecutionTimes]:
        """Infer one request's inputs on the calling thread (the event loop), which waits while OpenVINO
        runs: for a tiny model, whose inference costs less than the hand-over to OpenVINO's threads and
        back (adaptive.py says when). Same tensors and outputs as execute()."""
        started = perf_counter_ns()
        try:
            feeds = self._feeds(parts, pad_to)
            bound = self._bind_outputs(request, parts, pad_to, into)
            prepared, cpu_before = perf_counter_ns(), thread_time_ns()
            infer_with_tensors(request, feeds)  # one OpenVINO thread: this one
            inferred, cpu_after = perf_counter_ns(), thread_time_ns()
            outputs = self._outputs(request, bound, into or {})
        except Exception as e:
            raise _inference_failed(e) from e
        times = ExecutionTimes(
            input_ns=prepared - started,
            infer_ns=inferred - prepared,
            output_ns=perf_counter_ns() - inferred,
            infer_cpu_ns=cpu_after - cpu_before,
        )
        return outputs, times

    def _outputs(
        self, request: ov.InferRequest, bound: dict[int, np.ndarray], into: Mapping[int, memoryview]
    ) -> list[np.ndarray]:
        """The outputs of the run that just ended on `request`, as arrays of ours (the request is reused):
        the bound arrays, or copies out of the request, straight into `into`'s memory where it is given."""
        return [
            _bound_output(request.get_output_tensor(i), bound[i])
            if i in bound
            else _read_output(request.get_output_tensor(i), datatype, into.get(i))
            for i, datatype in enumerate(self._output_types)
        ]

    def _completed(self, key: int) -> None:
        """On an OpenVINO thread, with the GIL: copy the outputs out (the request is reused next) and
        hand them to the event loop."""
        run = self._runs.get(key)
        if run is None:
            return
        inferred = perf_counter_ns()
        try:
            outputs = self._outputs(run.request, run.bound, run.into)
            result: tuple | InternalError = (
                outputs,
                ExecutionTimes(
                    input_ns=run.prepared_ns - run.started_ns,
                    infer_ns=inferred - run.prepared_ns,
                    output_ns=perf_counter_ns() - inferred,
                ),
            )
        except Exception as e:
            result = _inference_failed(e)
        try:
            self._loop.call_soon_threadsafe(_settle, run.future, result)
        except RuntimeError:  # the loop has closed: the process is exiting
            pass

    def _sweep(self) -> None:
        """OpenVINO's Python binding never calls the completion callback when inference fails. Runs that
        have been in flight for a while are asked for their state; a failed one answers with its error."""
        self._sweep_timer = None
        now = perf_counter_ns()
        for run in list(self._runs.values()):
            if now - run.prepared_ns < _SWEEP_NS or run.future.done():
                continue
            try:
                run.request.wait_for(0)
            except Exception as e:
                _settle(run.future, _inference_failed(e))
        if self._runs:
            self._sweep_timer = self._loop.call_later(_SWEEP_S, self._sweep)


# How often, and after how long in flight, runs are checked for a failure OpenVINO did not call back for.
_SWEEP_S = 0.02
_SWEEP_NS = int(_SWEEP_S * 1e9)


@dataclass(slots=True)
class _Run:
    future: asyncio.Future
    request: ov.InferRequest
    feeds: dict  # tensors may share the arrays' memory: they must live until the run ends
    bound: dict[int, np.ndarray]  # outputs OpenVINO writes into directly, by output index
    into: Mapping[int, memoryview]  # where the client wants outputs (shared memory), by output index
    started_ns: int
    prepared_ns: int


def _on_completed(key: tuple) -> None:
    executor = key[0]()
    if executor is not None:
        executor._completed(key[1])


def _settle(future: asyncio.Future, result) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _stack(arrays: Sequence[np.ndarray], rows: int | None) -> np.ndarray:
    first = arrays[0]
    total = sum(a.shape[0] for a in arrays)
    shape = ((rows or total), *first.shape[1:])
    # Padding rows are zeros (empty bytes for BYTES); they are computed and never returned.
    out = np.full(shape, b"", dtype=object) if first.dtype == object else np.empty(shape, first.dtype)
    offset = 0
    for a in arrays:
        out[offset : offset + a.shape[0]] = a
        offset += a.shape[0]
    if offset < shape[0] and first.dtype != object:
        out[offset:] = 0
    return out


def _inference_failed(error: Exception) -> InternalError:
    """The client's one-line message; OpenVINO's exception stays attached as the cause, for the log."""
    failure = InternalError(f"OpenVINO inference failed: {_first_line(error)}")
    failure.__cause__ = error
    return failure


def _first_line(error: Exception) -> str:
    """OpenVINO errors repeat 'Exception from src/...' frames; the last line says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith("Exception from ")]
    return (meaningful or lines or [type(error).__name__])[-1]


def _private_method(name: str) -> Callable[..., Any] | None:
    """The binding's C++ InferRequest method `name`, below its Python wrapper; None where this OpenVINO
    lacks it."""
    try:
        from openvino._pyopenvino import InferRequest as base  # private: tested on 2025.4 to 2026.4
    except ImportError:
        return None
    return getattr(base, name, None)


def _private_start_async() -> Callable[[Any, dict, Any], None] | None:
    return _private_method("start_async")


# The binding's public start_async() and infer() run every input through a Python dispatcher
# (singledispatch, a request-tensor lookup, a copy of each read-only array in numpy) before calling the
# C++ ones. The executor hands the C++ ones ready tensors instead, and falls back to the public calls (same
# tensors, same result) on a release without those symbols (docs/design/output-binding.md).
_START_ASYNC = _private_start_async()
_INFER = _private_method("infer")


def start_with_tensors(request: ov.InferRequest, feeds: dict[int, ov.Tensor]) -> None:
    """Start an inference on ready tensors (input index -> ov.Tensor); completion calls back."""
    if _START_ASYNC is not None:
        _START_ASYNC(request, feeds, None)
    else:
        request.start_async(feeds)


def infer_with_tensors(request: ov.InferRequest, feeds: dict[int, ov.Tensor]) -> None:
    """Infer on ready tensors on this thread (the GIL is released meanwhile); outputs stay in the request."""
    if _INFER is not None:
        _INFER(request, feeds, True, False)  # share_outputs: the dict it returns copies nothing
    else:
        request.infer(feeds, share_outputs=True)


def _numpy_dtype(port) -> np.dtype | None:
    try:
        return np.dtype(port.get_element_type().to_dtype())
    except Exception:  # string, dynamic or exotic element types: the tensor is built from the datatype
        return None


def _to_tensor(array: np.ndarray, datatype: str, dtype: np.dtype | None) -> ov.Tensor:
    if datatype == "BYTES":
        tensor = ov.Tensor(ov.Type.string, ov.Shape(list(array.shape)))
        if array.size:
            tensor.bytes_data = list(array.ravel())
        return tensor
    if datatype == "BF16":
        tensor = ov.Tensor(ov.Type.bf16, ov.Shape(list(array.shape)))
        tensor.data.view(np.uint16)[...] = array
        return tensor
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    if array.flags.writeable and array.flags.c_contiguous:
        return ov.Tensor(array, shared_memory=True)
    # Arrays over a request's immutable bytes cannot be shared with OpenVINO: one copy, in C++.
    # (np.ascontiguousarray returns at least 1-d: a scalar keeps its shape () through the reshape.)
    return ov.Tensor(np.ascontiguousarray(array).reshape(array.shape))


def _bound_output(tensor: ov.Tensor, array: np.ndarray) -> np.ndarray:
    """The bound array, when OpenVINO wrote into it; a copy of its output where it did not.

    Asked through numpy, not pybind's Shape and a ctypes pointer: this runs on an OpenVINO thread holding the
    GIL with the caches cold, where those cost far more (docs/design/output-binding.md)."""
    data = tensor.data
    if data.shape == array.shape and np.may_share_memory(data, array):
        return array
    return data.copy()


def _view_of(memory: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
    """`memory` as an array of `shape`, or None when it is too small (the caller then reports that)."""
    count = math.prod(shape)
    if count * dtype.itemsize > memory.nbytes:
        return None
    return np.frombuffer(memory, dtype, count=count).reshape(shape)


def _read_output(tensor: ov.Tensor, datatype: str, into: memoryview | None = None) -> np.ndarray:
    if into is not None and datatype not in ("BYTES", "BF16"):
        data = tensor.data
        target = _view_of(into, data.dtype, data.shape)
        if target is not None:  # the one copy, into the client's memory
            np.copyto(target, data)
            return target
    if datatype == "BYTES":
        shape = tuple(tensor.shape)
        out = np.empty(int(np.prod(shape)), dtype=object)
        if out.size:
            out[:] = list(tensor.bytes_data.ravel())
        return out.reshape(shape)
    if datatype == "BF16":
        return tensor.data.view(np.uint16).copy()
    return tensor.data.copy()
