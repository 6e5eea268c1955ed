"""Custom node libraries with OVMS's C ABI (`custom_node_interface.h`, declared here with ctypes: the names,
struct layouts and enum values must match OVMS's header exactly, so that libraries built for OVMS load
unchanged). A library's output buffers become the arrays downstream nodes read, without a copy, and go back
through `release` when the last array goes.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import time
import weakref
from collections.abc import Mapping

import numpy as np

from gateway.core.datatypes import BY_NAME
from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec
from gateway.pipelines.node_contract import CustomNodeError, ExecuteTimes, check_outputs

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
