"""The calls the transports make: what a Gateway answers in one process, and a GatewayClient answers in a
worker process on the owner's behalf (gateway/workers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from gateway.core.records import (
    InferRequest,
    InferResponse,
    Interface,
    Method,
    ModelMetadata,
    ServerMetadata,
    TensorSpec,
    VersionStatus,
)
from gateway.memory.budget import RequestMemoryBudget
from gateway.memory.shared_memory import RegionStatus, SystemSharedMemory
from gateway.scheduling.scheduler import WhenFull


class DecodeTarget(Protocol):
    """What a request is decoded against: a model version or pipeline, or a worker's view of one."""

    @property
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    def client_inputs(self) -> Sequence[TensorSpec]:
        """The inputs as clients see them (an image input as BYTES); empty when the same as `inputs`."""
        ...

    def check_input_count(self, given: int) -> None: ...

    def takes_images(self, name: str) -> bool: ...


class Call(Protocol):
    """One inference request inside its accounting."""

    @property
    def servable(self) -> DecodeTarget: ...

    async def infer(
        self, request: InferRequest, into: Mapping[str, memoryview] | None = None
    ) -> InferResponse: ...


class GatewayApi(Protocol):
    @property
    def shared_memory(self) -> SystemSharedMemory: ...

    @property
    def memory_budget(self) -> RequestMemoryBudget: ...

    async def live(self) -> bool: ...

    async def ready(self) -> bool: ...

    async def server_metadata(self) -> ServerMetadata: ...

    async def model_ready(self, name: str, version: str = "", interface: Interface | None = None) -> bool: ...

    async def model_metadata(
        self, name: str, version: str = "", interface: Interface | None = None
    ) -> ModelMetadata: ...

    async def model_config(self, name: str, version: str = "") -> dict: ...

    async def statistics(self, name: str = "", version: str = "") -> list[dict]: ...

    async def repository_index(self, ready_only: bool = False) -> list[VersionStatus]: ...

    async def served_names(self) -> list[str]: ...

    async def render_metrics(self) -> str: ...

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None: ...

    async def unload_model(self, name: str) -> None: ...

    async def reload_config(self) -> dict[str, str]: ...

    async def shared_memory_status(self, name: str = "") -> list[RegionStatus]: ...

    async def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    async def unregister_shared_memory(self, name: str = "") -> None: ...

    def request(
        self,
        model_name: str,
        model_version: str,
        interface: Interface | None,
        *,
        deadline: float | None = None,
        received_ns: int | None = None,
        when_full: WhenFull = WhenFull.REFUSE,
    ) -> AbstractAsyncContextManager[Call]: ...

    async def wait_for_room(self, model_name: str, model_version: str) -> None: ...

    def count_unrouted(self, interface: Interface | None, method: Method) -> None: ...
