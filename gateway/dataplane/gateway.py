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
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from time import perf_counter_ns
from typing import Any, Protocol

import numpy as np
import openvino as ov

from gateway.config.settings import ServerSettings
from gateway.core.datatypes import from_numpy
from gateway.core.errors import (
    Code,
    FailedPrecondition,
    GatewayError,
    InternalError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from gateway.core.jsondoc import parse_json
from gateway.core.records import (
    InferInput,
    InferRequest,
    InferResponse,
    Interface,
    Method,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    VersionStatus,
)
from gateway.core.version import __version__
from gateway.dataplane.model_config import model_config, pipeline_config
from gateway.dataplane.reloader import Reloader
from gateway.memory.budget import RequestMemoryBudget, default_budget_bytes
from gateway.memory.ledger import SharedLedger
from gateway.memory.shared_memory import RegionStatus, SystemSharedMemory
from gateway.observability.metrics import Metrics, select_families
from gateway.observability.statistics import Outcome
from gateway.pipelines.executor import Pipeline, Servable
from gateway.pipelines.registry import PipelineRegistry
from gateway.scheduling.scheduler import WhenFull
from gateway.serving.manager import ModelManager
from gateway.serving.model_version import ModelVersion

log = logging.getLogger(__name__)

SERVER_NAME = "ovgw"
PIPELINE_PLATFORM = "OpenVINO"  # what metadata reports for a pipeline, as for models (OVMS)

# Protocol extensions that work at this commit; clients (perf_analyzer) trust this list.
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
    "schedule_policy",
    "system_shared_memory",
    "cuda_shared_memory",  # answered as a CPU-only Triton answers it
)

# How a GatewayError ends a request, beyond "invalid" (Outcome.FAILED).
_OUTCOMES = {
    Code.RESOURCE_EXHAUSTED: Outcome.REJECTED,
    Code.DEADLINE_EXCEEDED: Outcome.TIMED_OUT,
    Code.INTERNAL: Outcome.BACKEND_FAILED,
}


def outcome_of(error: GatewayError) -> Outcome:
    """How a request that failed with `error` is counted in the statistics."""
    return _OUTCOMES.get(error.code, Outcome.FAILED)


class RequestEnding:
    """`with RequestEnding(what) as ending:` around a request's work: `ending.outcome` says how the block
    ended, as the statistics count it. An exception that is not a GatewayError is a defect of the gateway:
    logged with its traceback, and raised on as an InternalError of one line for the client."""

    __slots__ = ("outcome", "_what")

    def __init__(self, what: str):
        self.outcome = Outcome.FAILED
        self._what = what

    def __enter__(self) -> RequestEnding:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.outcome = Outcome.SUCCEEDED
        elif isinstance(error, GatewayError):
            self.outcome = outcome_of(error)
        elif isinstance(error, asyncio.CancelledError):
            self.outcome = Outcome.CANCELLED  # the client went away
        elif isinstance(error, Exception):
            log.error("request to %s failed", self._what, exc_info=error)
            self.outcome = Outcome.BACKEND_FAILED
            raise InternalError(f"internal error: {type(error).__name__}: {error}") from error


class InferCall:
    """One inference request inside its accounting (see Gateway.request): the servable it was routed to,
    which the transport decodes against, and the inference itself."""

    __slots__ = ("servable", "_deadline", "_when_full")

    def __init__(self, servable: Servable, deadline: float | None, when_full: WhenFull):
        self.servable = servable
        self._deadline = deadline
        self._when_full = when_full

    async def infer(
        self, request: InferRequest, into: Mapping[str, memoryview] | None = None
    ) -> InferResponse:
        """Validate, queue and run a decoded request; its `priority` and `timeout` parameters apply.
        `into`: output name -> memory the client wants it in (shared memory), where OpenVINO can write it."""
        priority, deadline = schedule_policy(request.parameters, self._deadline)
        outputs = await self.servable.infer(
            request.inputs, request.outputs, priority, deadline, self._when_full, into
        )
        return InferResponse(request.model_name, str(self.servable.version), outputs, id=request.id)


class Replicas(Protocol):
    """Processes that keep copies of some of the Gateway's state (the worker processes: workers/pool.py),
    told of each change, whichever process the call that made it came through."""

    async def add_region(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    async def remove_region(self, name: str) -> None: ...

    def forget_routes(self) -> None: ...  # the models changed: where a name routes, and its inputs


class Gateway:
    def __init__(
        self,
        settings: ServerSettings,
        core: ov.Core | None = None,
        on_config_reload: Callable[[], object] | None = None,
        memory_ledger: SharedLedger | None = None,
        replicas: Replicas | None = None,
    ):
        """`on_config_reload`: called on OVMS's config reload besides the models (the server re-reads its
        TLS files there). `memory_ledger`: the request memory of the worker processes too, which the
        bound then covers. `replicas`: the worker processes, told of registered regions and of model
        changes."""
        self.settings = settings
        self._on_config_reload = on_config_reload
        self._replicas = replicas
        self.memory_budget = RequestMemoryBudget(memory_bound(settings), memory_ledger)
        self.metrics = Metrics(
            select_families(settings.metrics_enable, settings.metrics_list), memory=self.memory_budget
        )
        self.manager = ModelManager(
            settings,
            core,
            on_execution=self.metrics.execution if self.metrics.enabled else None,
            memory=self.memory_budget,
        )
        self.pipelines = PipelineRegistry(self.manager)
        self.reloader = Reloader(self.manager, self.pipelines, settings)
        self.shared_memory = SystemSharedMemory(enabled=settings.allow_client_shm)
        self._accepting = True

    async def start(self) -> None:
        """Load every configured model, then build the pipelines on them. Returns when each has loaded
        or failed (and been reported)."""
        await self.manager.load_all()
        graphs = self.settings.pipelines
        self.pipelines.apply(
            graphs.pipelines, graphs.pipeline_errors, graphs.libraries, graphs.library_errors
        )

    async def stop(self, drain_timeout: float = 30.0) -> bool:
        """Refuse new requests (UNAVAILABLE), wait for the accepted ones; True when all finished in time."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight() == 0

    def in_flight(self) -> int:
        # a pipeline request counts itself: between its nodes no model version holds it
        return sum(v.in_flight for v in self.manager.versions()) + sum(p.in_flight for p in self.pipelines)

    async def render_metrics(self) -> str:
        """Prometheus's text format; NOT_FOUND when metrics are off (`--metrics_enable false`)."""
        if not self.metrics.enabled:
            raise NotFound("metrics are disabled (--metrics_enable false)")
        return self.metrics.render(self.manager)

    async def served_names(self) -> list[str]:
        """Every model and pipeline name the gateway knows, sorted."""
        return sorted({v.name for v in self.manager.versions()} | {p.name for p in self.pipelines})

    # --- Triton's system shared memory: the region registry (decoding looks regions up in it) -----

    async def shared_memory_status(self, name: str = "") -> list[RegionStatus]:
        return self.shared_memory.status(name)

    async def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shared_memory.register(name, key, offset, byte_size)
        if self._replicas is not None:
            await self._replicas.add_region(name, key, offset, byte_size)

    async def unregister_shared_memory(self, name: str = "") -> None:
        self.shared_memory.unregister(name)
        if self._replicas is not None:
            await self._replicas.remove_region(name)

    # --- health and metadata -------------------------------------------------------------------

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return self._accepting and self.manager.all_ready()

    async def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    async def model_ready(self, name: str, version: str = "", interface: Interface | None = None) -> bool:
        """Readiness of a model (version). An unknown name or version is NOT_FOUND, as the protocol says."""
        try:
            if not self.manager.knows(name) and self.pipelines.knows(name):
                pipeline = self.pipelines.get(name)  # OVMS: a pipeline ignores the version asked for
                ready = pipeline is not None and pipeline.ready
            else:
                ready = self.manager.is_ready(name, version)
        except GatewayError:
            self.count_unrouted(interface, Method.MODEL_READY)
            raise
        if interface is not None and self.metrics.enabled:
            # OVMS labels ModelReady without a version.
            self.metrics.request(True, interface, Method.MODEL_READY, name, None)
        return ready

    async def model_metadata(
        self, name: str, version: str = "", interface: Interface | None = None
    ) -> ModelMetadata:
        served = self._route(name, version, interface, Method.MODEL_METADATA)
        if isinstance(served, Pipeline):
            meta = ModelMetadata(
                served.name, (str(served.version),), PIPELINE_PLATFORM, served.inputs, served.outputs
            )
        else:
            meta = self.manager.metadata(served)
        if interface is not None and self.metrics.enabled:
            self.metrics.request(True, interface, Method.MODEL_METADATA, name, str(served.version))
        return meta

    async def model_config(self, name: str, version: str = "") -> dict:
        """Triton's model configuration, derived from the served version (model_configuration extension)."""
        served = self._servable(name, version)
        if isinstance(served, Pipeline):
            return pipeline_config(served)
        return model_config(served, served.settings.version_policy)

    async def statistics(self, name: str = "", version: str = "") -> list[dict]:
        if name and not self.manager.knows(name) and self.pipelines.knows(name):
            pipeline = self.pipelines.get(name)
            return [pipeline.stats.to_dict(name, str(pipeline.version))] if pipeline else []
        served = [
            v.stats.to_dict(v.name, str(v.version)) for v in self.manager.served_versions(name, version)
        ]
        if not name:
            served += [p.stats.to_dict(p.name, str(p.version)) for p in self.pipelines]
        return served

    async def repository_index(self, ready_only: bool = False) -> list[VersionStatus]:
        rows = self.manager.index(ready_only) + self.pipelines.index(ready_only)
        return sorted(rows, key=lambda r: (r.name, int(r.version or 0)))

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """The repository API's load: `parameters` as the request carried them (both transports)."""
        self._refuse_pipeline(name, "load")
        try:
            await self.manager.load(name, repository_config(parameters or {}))
        finally:
            self.pipelines.revalidate()  # a pipeline waiting for this model may serve now
            self._models_changed()

    async def unload_model(self, name: str) -> None:
        self._refuse_pipeline(name, "unload")
        try:
            await self.manager.unload(name)
            self.pipelines.revalidate()  # pipelines on this model are not ready any more
        finally:
            self._models_changed()

    def _models_changed(self) -> None:
        if self._replicas is not None:
            self._replicas.forget_routes()

    def _refuse_pipeline(self, name: str, what: str) -> None:
        if not self.manager.knows(name) and self.pipelines.knows(name):
            raise FailedPrecondition(
                f"'{name}' is a pipeline: pipelines come from config.json, so {what} it by editing the "
                "file (it is re-read on POST /v1/config/reload and by the file poll)"
            )

    async def reload_config(self) -> dict[str, str]:
        """OVMS's config reload: apply the config file (or the version folders) now."""
        if self._on_config_reload is not None:
            self._on_config_reload()
        try:
            return await self.reloader.reload()
        finally:
            self._models_changed()

    # --- inference -----------------------------------------------------------------------------

    async def infer(self, request: InferRequest, deadline: float | None = None) -> InferResponse:
        """Run one inference (the in-process API). `deadline` (time.monotonic) drops the request if it is
        still queued then, as does the request's `timeout` parameter (µs)."""
        async with self.request(request.model_name, request.model_version, None, deadline=deadline) as call:
            return await call.infer(request)

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
    ) -> AsyncIterator[InferCall]:
        """One inference request's accounting. The transport decodes, infers and encodes inside the block;
        however the request ends, there or here, it is counted once: in the statistics and (with an
        `interface`) in OVMS's request metrics. A name that routes nowhere is counted as unrouted and raises
        before the block. `received_ns` (perf_counter_ns when the transport got the request) makes the
        request time include reading the request."""
        received_ns = received_ns or perf_counter_ns()
        servable = self._route(model_name, model_version, interface, Method.MODEL_INFER)
        servable.in_flight += 1
        ending = RequestEnding(f"{servable.name} {servable.version}")
        try:
            with ending:
                if not self._accepting:
                    raise Unavailable("the server is shutting down")
                if when_full is WhenFull.REFUSE:
                    servable.refuse_if_full()  # before decoding: under overload a refusal should cost little
                yield InferCall(servable, deadline, when_full)
        finally:
            servable.in_flight -= 1
            self._account(servable, interface, ending.outcome, perf_counter_ns() - received_ns)

    async def infer_admitted(
        self,
        request: InferRequest,
        *,
        deadline: float | None,
        when_full: WhenFull,
        into: Mapping[str, memoryview] | None = None,
    ) -> InferResponse:
        """The inference of a request that a worker process accepted, decoded and accounts for
        (`account`): routed, queued and run here, in the process that owns the devices. It runs even
        while this process drains, since the worker accepted it before."""
        servable = self._servable(request.model_name, request.model_version)
        servable.in_flight += 1
        try:
            if when_full is WhenFull.REFUSE:
                servable.refuse_if_full()
            return await InferCall(servable, deadline, when_full).infer(request, into)
        finally:
            servable.in_flight -= 1

    def account(
        self, name: str, version: str, interface: Interface | None, outcome: Outcome, ns: int
    ) -> None:
        """Count a request that a worker process served, once, as `request` counts its own: under the
        version it was routed to, or as unrouted when that version is gone."""
        known: Servable | None = self.manager.existing_version(name, version)
        if known is None and not self.manager.knows(name):
            known = self.pipelines.get(name)
        if known is None:
            self.count_unrouted(interface, Method.MODEL_INFER)
        else:
            self._account(known, interface, outcome, ns)

    async def route(self, name: str, version: str, interface: Interface | None) -> Servable:
        """The servable an inference request names, counted as `request` counts a routing failure (a
        worker process decodes against what this returns)."""
        return self._route(name, version, interface, Method.MODEL_INFER)

    async def wait_for_room(self, model_name: str, model_version: str) -> None:
        """Until the queue of the version a request names can take it (at once when the name resolves to
        nothing: the request then fails as usual)."""
        try:
            served = self._servable(model_name, model_version)
        except GatewayError:
            return
        scheduler = served.scheduler if isinstance(served, ModelVersion) else None
        if scheduler is not None:
            await scheduler.wait_for_room()

    def _servable(self, name: str, version: str) -> Servable:
        """The ready model version, or pipeline, a name means: models first, then pipelines (OVMS)."""
        if self.manager.knows(name) or not self.pipelines.knows(name):
            return self.manager.version(name, version)
        return self.pipelines.pipeline(name)

    def _route(self, name: str, version: str, interface: Interface | None, method: Method) -> Servable:
        """The ready version a request is for. A failure is counted under the version when it exists (not
        ready), and as unrouted when it does not: OVMS keeps request counters per version, so a request for
        an unknown model or version has none to count in."""
        try:
            return self._servable(name, version)
        except GatewayError:
            known: Servable | None = self.manager.existing_version(name, version) or self.pipelines.get(name)
            if known is None:
                self.count_unrouted(interface, method)
            elif method is Method.MODEL_INFER:
                self._account(known, interface, Outcome.FAILED, 0)
            elif interface is not None and self.metrics.enabled:
                self.metrics.request(False, interface, method, name, str(known.version))
            raise

    def _account(self, version: Servable, interface: Interface | None, outcome: Outcome, ns: int) -> None:
        version.stats.record_outcome(outcome, ns)
        if interface is not None and self.metrics.enabled:
            label = str(version.version)
            self.metrics.request(outcome.succeeded, interface, Method.MODEL_INFER, version.name, label)
            if ns:
                self.metrics.request_time(interface, version.name, label, ns / 1000)

    def count_unrouted(self, interface: Interface | None, method: Method) -> None:
        """A failed request that names no served model or version; also one whose message could not even
        be parsed (gRPC), so it names none."""
        if interface is not None and self.metrics.enabled:
            self.metrics.unrouted(interface, method)

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


def memory_bound(settings: ServerSettings) -> int:
    """The bytes all requests in flight may hold (`--max_request_memory`; 0 = no bound)."""
    return default_budget_bytes() if settings.max_request_memory is None else settings.max_request_memory


def repository_config(parameters: Mapping[str, Any]) -> dict | None:
    """The `config` parameter of a repository load request (gRPC or REST): an OVMS model config entry as
    JSON text (or, over REST, a JSON object). None when absent: load the model as configured."""
    for key in parameters:
        if key.startswith("file:"):
            raise InvalidArgument(
                f"parameter '{key}': uploading model files is not supported; place them in the repository"
            )
    config = parameters.get("config")
    if config is None:
        return None
    if isinstance(config, bytes):
        config = config.decode(errors="replace")
    if isinstance(config, str):
        config = parse_json(config, "parameter 'config'")
    if not isinstance(config, dict):
        raise InvalidArgument("parameter 'config' must be a JSON object (an OVMS model config entry)")
    return config


def schedule_policy(parameters: Mapping, deadline: float | None) -> tuple[int, float | None]:
    """Triton's schedule_policy parameters: `priority` (1 = highest, 0 = the default level) and `timeout`
    (µs, 0 = none). Returns the priority and the earlier of the two deadlines (time.monotonic)."""
    priority = parameters.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidArgument(f"parameter 'priority' = {priority!r}: a non-negative integer is required")
    timeout = parameters.get("timeout", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise InvalidArgument(
            f"parameter 'timeout' = {timeout!r}: a non-negative integer (microseconds) is required"
        )
    if timeout:
        expires = time.monotonic() + timeout / 1e6
        deadline = expires if deadline is None else min(deadline, expires)
    return priority, deadline
