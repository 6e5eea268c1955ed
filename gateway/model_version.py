"""One served model version: its compiled model, its metadata, and request validation against it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgument
from .openvino_runtime import InferExecutor
from .settings import ModelSettings
from .types import InferInput, InferOutput, RequestedOutput, TensorSpec


class State(enum.Enum):
    # Triton's repository-index states, which the index API reports verbatim.
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


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
    executor: InferExecutor | None = None
    _input_index: dict[str, int] = field(default_factory=dict)
    _output_index: dict[str, int] = field(default_factory=dict)

    def activate(self, inputs, input_bounds, outputs, executor: InferExecutor) -> None:
        self.inputs, self.input_bounds, self.outputs = inputs, input_bounds, outputs
        self._input_index = {s.name: i for i, s in enumerate(inputs)}
        self._output_index = {s.name: i for i, s in enumerate(outputs)}
        self.executor = executor
        self.state, self.reason = State.READY, ""

    def fail(self, reason: str) -> None:
        self.state, self.reason, self.executor = State.UNAVAILABLE, reason, None

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def order_inputs(self, inputs: Sequence[InferInput]) -> list[np.ndarray]:
        """Check the request's inputs against the model and return their arrays in model input order."""
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
            self._check_shape(spec, self.input_bounds[index], given.shape)
            ordered[index] = given.data
        missing = [s.name for s, a in zip(self.inputs, ordered, strict=True) if a is None]
        if missing:
            raise InvalidArgument(
                f"Invalid number of inputs - Expected: {len(self.inputs)}; Actual: {len(inputs)}; "
                f"missing input(s): {', '.join(missing)}"
            )
        return ordered  # type: ignore[return-value]

    @staticmethod
    def _check_shape(spec: TensorSpec, bounds, shape: tuple[int, ...]) -> None:
        ok = len(shape) == len(bounds) and all(
            lo <= d and (hi < 0 or d <= hi) for d, (lo, hi) in zip(shape, bounds, strict=True)
        )
        if not ok:
            expected = _fmt(
                lo if lo == hi else (-1 if hi < 0 and lo == 0 else f"{lo}:{'' if hi < 0 else hi}")
                for lo, hi in bounds
            )
            raise InvalidArgument(
                f"Invalid input shape - Expected: {expected}; Actual: {_fmt(shape)}; input name: {spec.name}"
            )

    def select_outputs(self, requested: Sequence[RequestedOutput] | None) -> list[int]:
        if requested is None or len(requested) == 0:
            return list(range(len(self.outputs)))
        picked: list[int] = []
        for out in requested:
            index = self._output_index.get(out.name)
            if index is None:
                raise InvalidArgument(
                    f"unexpected output '{out.name}' for model '{self.name}' version {self.version}; "
                    f"model outputs: {', '.join(self._output_index)}"
                )
            if index in picked:
                raise InvalidArgument(f"output '{out.name}' is requested more than once")
            picked.append(index)
        return picked

    async def infer(
        self, inputs: Sequence[InferInput], requested: Sequence[RequestedOutput] | None
    ) -> list[InferOutput]:
        arrays = self.order_inputs(inputs)
        picked = self.select_outputs(requested)
        assert self.executor is not None
        results = await self.executor.run(arrays, [s.datatype for s in self.inputs])
        outputs = []
        for position, index in enumerate(picked):
            spec, array = self.outputs[index], results[index]
            params = dict(requested[position].parameters) if requested else {}
            outputs.append(InferOutput(spec.name, spec.datatype, tuple(array.shape), array, params))
        return outputs
