"""Transport-neutral request, response and metadata types.

Tensors are numpy arrays from decode to encode: `InferInput.data` already has the
request's shape and the datatype's numpy dtype (object arrays of `bytes` for BYTES,
uint16 bit patterns for BF16).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Parameter values as both protocols carry them: bool, int, float or str.
Parameters = dict[str, Any]


class Interface(enum.Enum):
    """The transport a request came in on: OVMS's `interface` metric label."""

    GRPC = "gRPC"
    REST = "REST"


class Method(enum.Enum):
    """The protocol call a request made: OVMS's `method` metric label."""

    MODEL_INFER = "ModelInfer"
    MODEL_METADATA = "ModelMetadata"
    MODEL_READY = "ModelReady"


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[InferInput]
    model_version: str = ""  # "" = the version the model's policy serves by default (the highest)
    id: str = ""
    outputs: list[RequestedOutput] | None = None  # None = every output of the model, in model order
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as clients see it; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One row of the repository index: a model version and its state."""

    name: str
    version: str
    state: str  # READY, LOADING, UNAVAILABLE, UNLOADING
    reason: str = ""
