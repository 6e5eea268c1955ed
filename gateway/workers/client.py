"""The Gateway as a worker process sees it: the same calls the transports make on a Gateway, answered by
the owner process over a Channel.

A worker decodes and encodes; the owner routes, queues, batches and runs, and counts every request: an
inference's outcome is reported to it (`account`) once the worker has answered, so that a request counts
once, as it does in one process, wherever it failed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from time import perf_counter_ns
from typing import Any

from gateway.core.errors import Unavailable
from gateway.core.records import (
    InferRequest,
    InferResponse,
    Interface,
    Method,
    ModelMetadata,
    ServerMetadata,
    VersionStatus,
)
from gateway.dataplane.gateway import RequestEnding
from gateway.dataplane.servable_view import ServableView
from gateway.memory.budget import RequestMemoryBudget
from gateway.memory.shared_memory import RegionStatus, SystemSharedMemory
from gateway.scheduling.scheduler import WhenFull
from gateway.workers.channel import Channel
from gateway.workers.wire import pack_request, unpack_response

log = logging.getLogger(__name__)

# How long a worker trusts a route it was given. The owner checks every request again; a stale route only
# decodes against the previous metadata (input count, image inputs) for this long after a reload.
ROUTE_TTL_S = 1.0


class RemoteCall:
    """One inference request inside its accounting (GatewayClient.request), as InferCall is in one process."""

    __slots__ = ("servable", "response_version", "_client", "_deadline", "_when_full")

    def __init__(
        self, client: GatewayClient, servable: ServableView, deadline: float | None, when_full: WhenFull
    ):
        self.servable = servable
        self.response_version = ""
        self._client = client
        self._deadline = deadline
        self._when_full = when_full

    async def infer(
        self, request: InferRequest, into: Mapping[str, memoryview] | None = None
    ) -> InferResponse:
        """`into` is not carried across: the transport copies outputs into the client's memory."""
        packed = await self._client.channel.call(
            "infer_admitted", pack_request(request), self._deadline, self._when_full.value
        )
        response = unpack_response(packed)
        self.response_version = response.model_version
        return response


class GatewayClient:
    """What the transports call in a worker process (see Gateway for each call)."""

    def __init__(self, channel: Channel, *, memory_budget: RequestMemoryBudget, allow_client_shm: bool):
        self.channel = channel
        self.memory_budget = memory_budget
        self.shared_memory = SystemSharedMemory(enabled=allow_client_shm)
        self._routes: dict[tuple[str, str], tuple[ServableView, float]] = {}
        self._accepting = True
        self.in_flight = 0

    # --- the owner's state ---------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._accepting = False

    def forget_routes(self) -> None:
        self._routes.clear()

    # --- health and metadata -------------------------------------------------------------------

    async def live(self) -> bool:
        return not self.channel.closed

    async def ready(self) -> bool:
        return self._accepting and not self.channel.closed and await self.channel.call("ready")

    async def server_metadata(self) -> ServerMetadata:
        return await self.channel.call("server_metadata")

    async def model_ready(self, name: str, version: str = "", interface: Interface | None = None) -> bool:
        return await self.channel.call("model_ready", name, version, interface)

    async def model_metadata(
        self, name: str, version: str = "", interface: Interface | None = None
    ) -> ModelMetadata:
        return await self.channel.call("model_metadata", name, version, interface)

    async def model_config(self, name: str, version: str = "") -> dict:
        return await self.channel.call("model_config", name, version)

    async def statistics(self, name: str = "", version: str = "") -> list[dict]:
        return await self.channel.call("statistics", name, version)

    async def repository_index(self, ready_only: bool = False) -> list[VersionStatus]:
        return await self.channel.call("repository_index", ready_only)

    async def served_names(self) -> list[str]:
        return await self.channel.call("served_names")

    async def render_metrics(self) -> str:
        return await self.channel.call("render_metrics")

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.forget_routes()
        await self.channel.call("load_model", name, dict(parameters or {}))

    async def unload_model(self, name: str) -> None:
        self.forget_routes()
        await self.channel.call("unload_model", name)

    async def reload_config(self) -> dict[str, str]:
        self.forget_routes()
        return await self.channel.call("reload_config")

    # --- Triton's system shared memory: registered in every process, through the owner -----------

    async def shared_memory_status(self, name: str = "") -> list[RegionStatus]:
        return self.shared_memory.status(name)

    async def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self.channel.call("register_shared_memory", name, key, offset, byte_size)

    async def unregister_shared_memory(self, name: str = "") -> None:
        await self.channel.call("unregister_shared_memory", name)

    # --- inference -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def request(
        self,
        model_name: str,
        model_version: str,
        interface: Interface | None,
        *,
        deadline: float | None = None,
        received_ns: int | None = None,
        when_full: WhenFull = WhenFull.REFUSE,
    ) -> AsyncIterator[RemoteCall]:
        """As Gateway.request: the transport decodes, infers and encodes inside the block, and the request
        is counted once, by the owner, however it ends."""
        received_ns = received_ns or perf_counter_ns()
        servable = await self._route(model_name, model_version, interface)
        call = RemoteCall(self, servable, deadline, when_full)
        self.in_flight += 1
        ending = RequestEnding(f"{servable.name} {servable.version}")
        try:
            with ending:
                if not self._accepting:
                    raise Unavailable("the server is shutting down")
                yield call
        finally:
            self.in_flight -= 1
            self.channel.notify(
                "account",
                servable.name,
                call.response_version or str(servable.version),
                interface and interface.value,
                ending.outcome.value,
                perf_counter_ns() - received_ns,
            )

    async def _route(self, name: str, version: str, interface: Interface | None) -> ServableView:
        key = (name, version)
        now = time.monotonic()
        cached = self._routes.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        view = await self.channel.call("route", name, version, interface)  # a failure is counted there
        self._routes[key] = (view, now + ROUTE_TTL_S)
        return view

    async def wait_for_room(self, model_name: str, model_version: str) -> None:
        await self.channel.call("wait_for_room", model_name, model_version)

    def count_unrouted(self, interface: Interface | None, method: Method) -> None:
        self.channel.notify("count_unrouted", interface, method)
