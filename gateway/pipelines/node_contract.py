"""The contract every custom node library keeps, whatever it is written in (docs/pipelines.md): an instance
per pipeline node, declared inputs and outputs, and outputs checked against the declaration."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from gateway.core.datatypes import from_numpy
from gateway.core.records import TensorSpec


class ExecuteTimes:
    """The last few execute() times of one node instance (wall clock, ns): the pipeline executor runs a
    node that is reliably cheap on the event loop (see executor.py)."""

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
