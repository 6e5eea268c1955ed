"""Custom node libraries written in Python: `base_path` is a `.py` file or a module name, optionally
`:ClassName` (default `CustomNode`); the class has `initialize(params)`, `inputs_info()`, `outputs_info()`,
`execute(inputs) -> outputs` and optionally `deinitialize()` (docs/pipelines.md)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.datatypes import BY_NAME, from_numpy
from gateway.core.errors import ConfigError
from gateway.core.records import TensorSpec
from gateway.pipelines.node_contract import CustomNodeError, ExecuteTimes, check_outputs

log = logging.getLogger(__name__)

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
