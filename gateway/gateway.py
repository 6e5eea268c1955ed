"""The in-process API: what both servers call, and what an application can call with no network.

    gateway = Gateway(ServerSettings(models=[ModelSettings("dummy", "/models/dummy")]))
    await gateway.start()
    outputs = await gateway.infer_numpy("dummy", {"b": np.zeros((1, 10), np.float32)})
    await gateway.stop()

This is the analogue of OVMS's C-API: requests are the same InferRequest objects
the transports decode, and errors are GatewayError with a protocol code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from time import perf_counter_ns

import numpy as np
import openvino as ov

from . import __version__
from .datatypes import from_numpy
from .errors import Code, GatewayError, InternalError, InvalidArgument, Unavailable
from .manager import ModelManager
from .metrics import Metrics, select_families
from .model_config import model_config
from .reloader import Reloader
from .settings import ServerSettings
from .types import (
    InferInput,
    InferRequest,
    InferResponse,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    VersionStatus,
)

log = logging.getLogger(__name__)

SERVER_NAME = "ovgw"

# Protocol extensions that work at this commit; clients (perf_analyzer) trust this list.
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
    "schedule_policy",
)

# Outcomes that are not failures of the model: the scheduler refused or dropped the request.
_REFUSALS = {Code.RESOURCE_EXHAUSTED: "rejected", Code.DEADLINE_EXCEEDED: "timed_out"}


class Gateway:
    def __init__(self, settings: ServerSettings, core: ov.Core | None = None):
        self.settings = settings
        self.manager = ModelManager(settings, core)
        self.metrics = Metrics(self.manager, select_families(settings.metrics_enable, settings.metrics_list))
        if self.metrics.enabled:
            self.manager.on_execution = self.metrics.execution
        self.reloader = Reloader(self.manager, settings)
        self._accepting = True

    async def start(self) -> None:
        """Load every configured model. Returns when each has loaded or failed (and been reported)."""
        await self.manager.load_all()

    async def stop(self, drain_timeout: float = 30.0) -> bool:
        """Refuse new requests (UNAVAILABLE), wait for the accepted ones; True when all finished in time."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight() == 0

    def in_flight(self) -> int:
        return sum(v.in_flight for v in self.manager.versions())

    # --- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._accepting and self.manager.all_ready()

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    def model_ready(self, name: str, version: str = "", interface: str = "") -> bool:
        ready = self.manager.is_ready(name, version)
        if interface and self.metrics.enabled:
            self.metrics.request(True, interface, "ModelReady", name, version)
        return ready

    def model_metadata(self, name: str, version: str = "", interface: str = "") -> ModelMetadata:
        meta = self.manager.metadata(name, version)
        if interface and self.metrics.enabled:
            self.metrics.request(True, interface, "ModelMetadata", name, version or meta.versions[-1])
        return meta

    def model_config(self, name: str, version: str = "") -> dict:
        """Triton's model configuration, derived from the served version (model_configuration extension)."""
        served = self.manager.version(name, version)
        return model_config(served, served.settings.version_policy)

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        return [v.stats.to_dict(v.name, str(v.version)) for v in self.manager.served_versions(name, version)]

    def repository_index(self, ready_only: bool = False) -> list[VersionStatus]:
        return self.manager.index(ready_only)

    async def load_model(self, name: str, config: dict | None = None) -> None:
        await self.manager.load(name, config)

    async def unload_model(self, name: str) -> None:
        await self.manager.unload(name)

    async def reload_config(self) -> dict[str, str]:
        """OVMS's config reload: apply the config file (or the version folders) now."""
        return await self.reloader.reload()

    # --- inference -----------------------------------------------------------------------------

    async def infer(
        self,
        request: InferRequest,
        interface: str = "",
        received_ns: int | None = None,
        deadline: float | None = None,
    ) -> InferResponse:
        """Run one inference. `interface` ("gRPC", "REST") labels the OVMS request metrics; `received_ns`
        (perf_counter_ns when the transport got the request) makes the request time include decoding;
        `deadline` (event-loop time, e.g. from the gRPC deadline) drops the request if it is still queued
        then, as does the request's `timeout` parameter (µs)."""
        if not self._accepting:
            raise Unavailable("the server is shutting down")
        version = self.manager.version(request.model_name, request.model_version)
        priority, deadline = schedule_policy(request.parameters, deadline)
        started = perf_counter_ns()
        ok = False
        refusal = ""
        backend_failure = False
        version.in_flight += 1
        try:
            outputs = await version.infer(request.inputs, request.outputs, priority, deadline)
            ok = True
        except GatewayError as e:
            refusal = _REFUSALS.get(e.code, "")
            backend_failure = e.code is Code.INTERNAL
            raise
        except asyncio.CancelledError:
            refusal = "cancelled"  # the client went away
            raise
        except Exception as e:  # an OpenVINO failure during inference
            log.exception("inference failed for model %s version %d", version.name, version.version)
            backend_failure = True
            raise InternalError(f"inference failed for model '{version.name}': {e}") from None
        finally:
            version.in_flight -= 1
            finished = perf_counter_ns()
            if refusal:
                version.stats.record_refusal(refusal)
            else:
                version.stats.record_request(ok, finished - started, backend_failure)
            if interface and self.metrics.enabled:
                label = str(version.version)
                self.metrics.request(ok, interface, "ModelInfer", version.name, label)
                self.metrics.request_time(
                    interface, version.name, label, (finished - (received_ns or started)) / 1000
                )
        return InferResponse(request.model_name, str(version.version), outputs, id=request.id)

    async def infer_numpy(
        self,
        model_name: str,
        inputs: Mapping[str, np.ndarray],
        version: str = "",
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Convenience form of infer(): numpy arrays in, a dict of numpy arrays out."""
        request_inputs = []
        for name, array in inputs.items():
            array = np.asarray(array)
            try:
                datatype = from_numpy(array.dtype).name
            except ValueError as e:
                raise InvalidArgument(f"input '{name}': {e}") from None
            if datatype == "BYTES" and array.dtype != object:
                array = np.vectorize(
                    lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object]
                )(array)
            request_inputs.append(InferInput(name, datatype, tuple(array.shape), array))
        requested = [RequestedOutput(n) for n in outputs] if outputs is not None else None
        response = await self.infer(InferRequest(model_name, request_inputs, version, outputs=requested))
        return {o.name: o.data for o in response.outputs}


def schedule_policy(parameters: Mapping, deadline: float | None) -> tuple[int, float | None]:
    """Triton's schedule_policy parameters: `priority` (1 = highest, 0 = the default level) and `timeout`
    (µs, 0 = none). Returns the priority and the earlier of the two deadlines (event-loop time)."""
    priority = parameters.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidArgument(f"parameter 'priority' = {priority!r}: a non-negative integer is required")
    timeout = parameters.get("timeout", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise InvalidArgument(
            f"parameter 'timeout' = {timeout!r}: a non-negative integer (microseconds) is required"
        )
    if timeout:
        expires = asyncio.get_running_loop().time() + timeout / 1e6
        deadline = expires if deadline is None else min(deadline, expires)
    return priority, deadline
