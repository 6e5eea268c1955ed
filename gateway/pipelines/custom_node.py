"""Custom nodes: code in a pipeline that is not a model. Two kinds of library, one contract.

- A shared library with OVMS's C ABI (`custom_node_interface.h`, declared below with ctypes: the names,
  struct layouts and enum values must match OVMS's header exactly, so that libraries built for OVMS
  load unchanged).
- A Python class (see README, "Python custom nodes"): `base_path` is a `.py` file or a module name,
  optionally `:ClassName` (default `CustomNode`); the class has `initialize(params)`,
  `inputs_info()`, `outputs_info()`, `execute(inputs) -> outputs` and optionally `deinitialize()`.

Each pipeline node gets its own instance (`initialize` with the node's params), made when the pipeline
is built and deinitialized once nothing uses it any more (the pipeline retired and its last request and
output buffer gone). `execute` runs in a thread (on the event loop only once it has proved to take
well under a millisecond, see pipeline.py) and may run concurrently for several requests.
Inputs are read-only views of the upstream arrays; outputs are checked against the contract (name,
precision, byte size = product of dims x element size). A C library's output buffers become the arrays
downstream nodes read, without a copy, and go back through `release` when the last array goes.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import logging
import math
import statistics
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.core.datatypes import BY_NAME, from_numpy
from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec

log = logging.getLogger(__name__)

# CustomNodeTensorPrecision, in the header's order (a C enum: int-sized, values from 0).
PRECISIONS = ("UNSPECIFIED", "FP32", "FP16", "U8", "I8", "I16", "U16", "I32", "FP64", "I64")
# The header's precision -> the protocol's datatype.
PRECISION_DATATYPES = {
    "FP32": "FP32",
    "FP16": "FP16",
    "U8": "UINT8",
    "I8": "INT8",
    "I16": "INT16",
    "U16": "UINT16",
    "I32": "INT32",
    "FP64": "FP64",
    "I64": "INT64",
}
DATATYPE_PRECISIONS = {datatype: PRECISIONS.index(p) for p, datatype in PRECISION_DATATYPES.items()}


class CustomNodeTensor(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        # uint8_t* in the header; a void pointer has its layout, and reads and takes a plain address
        # (a cast to POINTER(c_uint8) per tensor cost microseconds on every execute).
        ("data", ctypes.c_void_p),
        ("dataBytes", ctypes.c_uint64),
        ("dims", ctypes.POINTER(ctypes.c_uint64)),
        ("dimsCount", ctypes.c_uint64),
        ("precision", ctypes.c_int),
    ]


class CustomNodeTensorInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dims", ctypes.POINTER(ctypes.c_uint64)),
        ("dimsCount", ctypes.c_uint64),
        ("precision", ctypes.c_int),
    ]


class CustomNodeParam(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("value", ctypes.c_char_p)]


class ExecuteTimes:
    """The last few execute() times of one node instance (wall clock, ns): the pipeline executor runs a
    node that is reliably cheap on the event loop (see pipeline.py)."""

    def __init__(self, keep: int = 8):
        self._recent: deque[int] = deque(maxlen=keep)

    def add(self, ns: int) -> None:
        self._recent.append(ns)

    def typical_ns(self) -> int | None:
        """The median of the recent runs; None until there are three."""
        if len(self._recent) < 3:
            return None
        return int(statistics.median(self._recent))


class CustomNodeError(Exception):
    """A library call failed or broke the contract; the message says which and how."""


class NodeInstance(Protocol):
    """One pipeline node's instance of a library (initialized with the node's params)."""

    library: str
    inputs: tuple[TensorSpec, ...]  # from the library's inputs info; -1 = dynamic dimension
    outputs: tuple[TensorSpec, ...]
    times: ExecuteTimes

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking; called off the event loop, possibly from several threads at once."""
        ...


def check_outputs(
    library: str, declared: Sequence[TensorSpec], produced: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Outputs as the contract says: every declared one present, of its datatype; shapes checked
    against the declared ones where those are static. Undeclared outputs are refused."""
    by_name = {spec.name: spec for spec in declared}
    for name in produced:
        if name not in by_name:
            raise CustomNodeError(
                f"library '{library}' returned output '{name}', which its outputs info does not declare "
                f"(declared: {', '.join(by_name)})"
            )
    out = {}
    for spec in declared:
        array = produced.get(spec.name)
        if array is None:
            raise CustomNodeError(f"library '{library}' returned no output '{spec.name}'")
        if not isinstance(array, np.ndarray):
            raise CustomNodeError(
                f"library '{library}': output '{spec.name}' is a {type(array).__name__}, not a numpy array"
            )
        try:
            datatype = from_numpy(array.dtype).name
        except ValueError:
            datatype = str(array.dtype)
        if datatype != spec.datatype:
            raise CustomNodeError(
                f"library '{library}': output '{spec.name}' is {datatype}; its outputs info says "
                f"{spec.datatype}"
            )
        if len(array.shape) != len(spec.shape) or any(
            d >= 0 and d != a for d, a in zip(spec.shape, array.shape, strict=True)
        ):
            raise CustomNodeError(
                f"library '{library}': output '{spec.name}' has shape {list(array.shape)}; its outputs "
                f"info says {list(spec.shape)}"
            )
        out[spec.name] = array
    return out


# --- C libraries (OVMS's ABI) ----------------------------------------------------------------------


class CLibrary:
    """A loaded shared library with the six functions of custom_node_interface.h."""

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise ConfigError(f"custom node library '{name}': cannot load '{path}': {e}") from None
        missing = [
            f
            for f in ("initialize", "deinitialize", "execute", "getInputsInfo", "getOutputsInfo", "release")
            if not hasattr(lib, f)
        ]
        if missing:
            raise ConfigError(
                f"custom node library '{name}' ('{path}') lacks {', '.join(missing)} of OVMS's "
                "custom_node_interface.h"
            )
        params = ctypes.POINTER(CustomNodeParam)
        lib.initialize.argtypes = [ctypes.POINTER(ctypes.c_void_p), params, ctypes.c_int]
        lib.deinitialize.argtypes = [ctypes.c_void_p]
        lib.execute.argtypes = [
            ctypes.POINTER(CustomNodeTensor),
            ctypes.c_int,
            ctypes.POINTER(ctypes.POINTER(CustomNodeTensor)),
            ctypes.POINTER(ctypes.c_int),
            params,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        info: list = [
            ctypes.POINTER(ctypes.POINTER(CustomNodeTensorInfo)),
            ctypes.POINTER(ctypes.c_int),
            params,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        lib.getInputsInfo.argtypes = info
        lib.getOutputsInfo.argtypes = info
        lib.release.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        for function in (
            "initialize",
            "deinitialize",
            "execute",
            "getInputsInfo",
            "getOutputsInfo",
            "release",
        ):
            getattr(lib, function).restype = ctypes.c_int
        self.lib = lib

    def instance(self, params: Mapping[str, str]) -> CNodeInstance:
        return CNodeInstance(self, params)


class _Params:
    """A node's params as the C array the ABI takes, kept alive as long as the instance."""

    def __init__(self, params: Mapping[str, str]):
        self._strings = [(k.encode(), v.encode()) for k, v in params.items()]
        self.count = len(self._strings)
        self.array = (CustomNodeParam * max(self.count, 1))(
            *(CustomNodeParam(k, v) for k, v in self._strings)
        )


class _ReleasedOnCollect:
    """The owner of one output buffer of a C library: numpy arrays view it through
    __array_interface__, and the buffer goes back through `release` when the last view goes."""

    def __init__(self, instance: CNodeInstance, address: int, shape: tuple[int, ...], dtype: np.dtype):
        self.__array_interface__ = {
            # Writeable: the buffer is the server's until it is released, and only read downstream (Python
            # nodes get read-only views); OpenVINO can then take it without a copy.
            "data": (address, False),
            "shape": shape,
            "typestr": dtype.str,
            "version": 3,
        }
        self._instance = instance  # the library state stays initialized while the buffer lives
        self._address = address

    def __del__(self) -> None:
        self._instance.release(self._address)


class CNodeInstance:
    def __init__(self, library: CLibrary, params: Mapping[str, str]):
        self.library = library.name
        self._lib = library.lib
        self._params = _Params(params)
        manager = ctypes.c_void_p()
        status = self._lib.initialize(ctypes.byref(manager), self._params.array, self._params.count)
        if status != 0:
            raise ConfigError(f"custom node library '{self.library}': initialize returned {status}")
        self._manager = manager
        self.times = ExecuteTimes()
        # deinitialize once the instance is unreachable: the pipeline retired, its requests and the
        # buffers they hold gone (buffers keep the instance alive, see _ReleasedOnCollect).
        weakref.finalize(self, _deinitialize, self._lib, manager, self.library)
        self.inputs = self._info(self._lib.getInputsInfo, "getInputsInfo")
        self.outputs = self._info(self._lib.getOutputsInfo, "getOutputsInfo")

    def release(self, address: int) -> None:
        status = self._lib.release(ctypes.c_void_p(address), self._manager)
        if status != 0:
            log.warning("custom node library '%s': release returned %d", self.library, status)

    def _info(self, function, what: str) -> tuple[TensorSpec, ...]:
        info = ctypes.POINTER(CustomNodeTensorInfo)()
        count = ctypes.c_int()
        status = function(
            ctypes.byref(info), ctypes.byref(count), self._params.array, self._params.count, self._manager
        )
        if status != 0:
            raise ConfigError(f"custom node library '{self.library}': {what} returned {status}")
        specs = []
        try:
            for i in range(count.value):
                entry = info[i]
                name = (entry.name or b"").decode()
                dims = tuple(int(entry.dims[d]) for d in range(entry.dimsCount))
                datatype = self._datatype(entry.precision, f"{what}: '{name}'")
                # The ABI's 0 means "any size" (dynamic); clients and validation use -1 for that.
                specs.append(TensorSpec(name, datatype, tuple(-1 if d == 0 else d for d in dims)))
                if entry.dims:
                    self.release(ctypes.addressof(entry.dims.contents))
        finally:
            if info:
                self.release(ctypes.addressof(info.contents))
        if len({s.name for s in specs}) != len(specs):
            raise ConfigError(f"custom node library '{self.library}': {what} names a tensor twice")
        return tuple(specs)

    def _datatype(self, precision: int, what: str) -> str:
        name = PRECISIONS[precision] if 0 <= precision < len(PRECISIONS) else None
        if name is None or name == "UNSPECIFIED":
            raise CustomNodeError(
                f"custom node library '{self.library}': {what} has precision {precision} "
                f"({name or 'not in CustomNodeTensorPrecision'})"
            )
        return PRECISION_DATATYPES[name]

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep: list[object] = []  # what the C structs point into, alive until execute returns
        tensors = _tensor_array(len(inputs))()
        # strict=False: an empty input set still gets a one-tensor array (a C array may not be empty)
        for tensor, (name, array) in zip(tensors, inputs.items(), strict=False):
            array = np.ascontiguousarray(array)  # a no-op for what pipelines pass: arrays, dim-0 slices
            dims = _dims_array(array.ndim)(*array.shape)
            keep += (array, dims)
            tensor.name = _encoded(name)
            tensor.data = array.ctypes.data
            tensor.dataBytes = array.nbytes
            tensor.dims = dims
            tensor.dimsCount = array.ndim
            precision = _DTYPE_PRECISIONS.get(array.dtype)
            if precision is None:  # the graph matched each input's datatype to the library's info
                raise CustomNodeError(f"input '{name}' is {array.dtype}: the node ABI has no such precision")
            tensor.precision = precision
        outputs = ctypes.POINTER(CustomNodeTensor)()
        count = ctypes.c_int()
        started = time.perf_counter_ns()
        status = self._lib.execute(
            tensors,
            len(inputs),
            ctypes.byref(outputs),
            ctypes.byref(count),
            self._params.array,
            self._params.count,
            self._manager,
        )
        self.times.add(time.perf_counter_ns() - started)
        if status != 0:
            raise CustomNodeError(f"custom node library '{self.library}': execute returned {status}")
        produced: dict[str, np.ndarray] = {}
        problem = None
        try:
            for i in range(count.value):
                tensor = outputs[i]
                output, why = self._output(tensor)
                if why is not None and problem is None:
                    problem = why
                if output is not None:
                    produced[(tensor.name or b"").decode(errors="replace")] = output
                output = None  # only `produced` holds the buffers: clearing it gives them back
        finally:
            if outputs:
                self.release(ctypes.addressof(outputs.contents))
        if problem is not None:
            produced.clear()  # its buffers go back now, not when the exception's traceback goes
            raise CustomNodeError(problem)
        try:
            return check_outputs(self.library, self.outputs, produced)
        except CustomNodeError:
            produced.clear()
            raise

    def _output(self, tensor: CustomNodeTensor) -> tuple[np.ndarray | None, str | None]:
        """One output as an array over the library's buffer (its dims array released now), or why it
        breaks the contract (its buffers released now)."""
        name = (tensor.name or b"").decode(errors="replace")
        dims_pointer, dims_count = tensor.dims, tensor.dimsCount
        dims = tuple(dims_pointer[:dims_count]) if dims_pointer else ()
        if dims_pointer:
            self.release(ctypes.addressof(dims_pointer.contents))
        address = tensor.data or 0
        try:
            datatype = self._datatype(tensor.precision, f"execute: output '{name}'")
        except CustomNodeError as e:
            if address:
                self.release(address)
            return None, str(e)
        dtype = BY_NAME[datatype].numpy
        expected = math.prod(dims) * dtype.itemsize
        if tensor.dataBytes != expected or (expected and not address):
            if address:
                self.release(address)
            return None, (
                f"custom node library '{self.library}': output '{name}' has {tensor.dataBytes} bytes; "
                f"dims {list(dims)} of {datatype} take {expected}"
            )
        if not expected:
            if address:
                self.release(address)
            return np.empty(dims, dtype), None
        owner = _ReleasedOnCollect(self, address, dims, dtype)
        return np.asarray(owner), None


@functools.cache
def _tensor_array(count: int) -> type[ctypes.Array]:
    """The ctypes array type of `count` tensors (at least one: a C array may not be empty); cached, as
    making a ctypes type per call cost more than many a small node's own work."""
    return CustomNodeTensor * max(count, 1)


@functools.cache
def _dims_array(rank: int) -> type[ctypes.Array]:
    return ctypes.c_uint64 * max(rank, 1)


@functools.cache
def _encoded(name: str) -> bytes:
    return name.encode()


# numpy dtype -> the header's precision, for the datatypes the ABI has.
_DTYPE_PRECISIONS = {BY_NAME[datatype].numpy: value for datatype, value in DATATYPE_PRECISIONS.items()}


def _deinitialize(lib, manager: ctypes.c_void_p, name: str) -> None:
    status = lib.deinitialize(manager)
    if status != 0:
        log.warning("custom node library '%s': deinitialize returned %d", name, status)


# --- Python libraries -------------------------------------------------------------------------------

_import_lock = threading.Lock()
DEFAULT_CLASS = "CustomNode"


def is_python_library(base_path: str) -> bool:
    """A `.py` file, or a dotted module name (optionally `:Class`); anything else is a shared library."""
    target = base_path.split(":", 1)[0]
    return target.endswith(".py") or (
        "/" not in target and not target.endswith(".so") and all(p.isidentifier() for p in target.split("."))
    )


class PythonLibrary:
    def __init__(self, name: str, base_path: str):
        self.name = name
        target, _, class_name = base_path.partition(":")
        class_name = class_name or DEFAULT_CLASS
        try:
            module = self._import(name, target)
        except Exception as e:
            raise ConfigError(
                f"custom node library '{name}': cannot import '{target}': {type(e).__name__}: {e}"
            ) from None
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise ConfigError(f"custom node library '{name}': '{target}' has no class '{class_name}'")
        missing = [m for m in ("initialize", "inputs_info", "outputs_info", "execute") if not hasattr(cls, m)]
        if missing:
            raise ConfigError(
                f"custom node library '{name}': class '{class_name}' lacks {', '.join(missing)}"
            )
        self.cls = cls

    @staticmethod
    def _import(name: str, target: str):
        with _import_lock:
            if target.endswith(".py"):
                path = Path(target)
                if not path.is_file():
                    raise FileNotFoundError(f"no file {target}")
                spec = importlib.util.spec_from_file_location(f"ovgw_custom_node_{name}", path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
                return module
            return importlib.import_module(target)

    def instance(self, params: Mapping[str, str]) -> PythonNodeInstance:
        return PythonNodeInstance(self, params)


def _python_specs(library: str, what: str, info: Any) -> tuple[TensorSpec, ...]:
    """`{name: (datatype, shape)}` from inputs_info()/outputs_info(): datatype a protocol name ("FP32")
    or anything numpy.dtype takes; -1 (or 0, as in the C ABI) a dynamic dimension."""
    if not isinstance(info, Mapping):
        raise ConfigError(
            f"custom node library '{library}': {what}() must return a dict, not {type(info).__name__}"
        )
    specs = []
    for name, entry in info.items():
        try:
            datatype, shape = entry
            if isinstance(datatype, str) and datatype in BY_NAME:
                datatype = BY_NAME[datatype].name
            else:
                datatype = from_numpy(np.dtype(datatype)).name
            dims = tuple(-1 if int(d) <= 0 else int(d) for d in shape)
        except Exception as e:
            raise ConfigError(
                f"custom node library '{library}': {what}()['{name}'] = {entry!r}: expected "
                f'(datatype, shape), e.g. ("FP32", (1, 3, -1, -1)): {e}'
            ) from None
        specs.append(TensorSpec(str(name), datatype, dims))
    return tuple(specs)


class PythonNodeInstance:
    def __init__(self, library: PythonLibrary, params: Mapping[str, str]):
        self.library = library.name
        try:
            self._node = library.cls()
            self._node.initialize(dict(params))
            self.inputs = _python_specs(self.library, "inputs_info", self._node.inputs_info())
            self.outputs = _python_specs(self.library, "outputs_info", self._node.outputs_info())
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"custom node library '{self.library}': initialize failed: {type(e).__name__}: {e}"
            ) from None
        self.times = ExecuteTimes()
        if hasattr(self._node, "deinitialize"):
            weakref.finalize(self, _python_deinitialize, self._node, self.library)

    def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        views = {}
        for name, array in inputs.items():
            view = array.view()
            view.flags.writeable = False  # inputs are read-only, as in the C ABI
            views[name] = view
        started = time.perf_counter_ns()
        try:
            produced = self._node.execute(views)
        except Exception as e:
            raise CustomNodeError(
                f"custom node library '{self.library}': execute raised {type(e).__name__}: {e}"
            ) from e
        self.times.add(time.perf_counter_ns() - started)
        if not isinstance(produced, Mapping):
            raise CustomNodeError(
                f"custom node library '{self.library}': execute returned a {type(produced).__name__}, "
                "not a dict of numpy arrays"
            )
        return check_outputs(self.library, self.outputs, produced)


def _python_deinitialize(node: Any, name: str) -> None:
    try:
        node.deinitialize()
    except Exception:
        log.exception("custom node library '%s': deinitialize failed", name)


Library = CLibrary | PythonLibrary


@dataclass(frozen=True, slots=True)
class LoadedLibrary:
    """A library from custom_node_library_config_list, loaded, or why it could not be."""

    name: str
    base_path: str
    library: Library | None
    error: str = ""


def load_library(name: str, base_path: str) -> LoadedLibrary:
    try:
        library: Library = (
            PythonLibrary(name, base_path) if is_python_library(base_path) else CLibrary(name, base_path)
        )
    except ConfigError as e:
        log.error("%s", e)
        return LoadedLibrary(name, base_path, None, str(e))
    return LoadedLibrary(name, base_path, library)
