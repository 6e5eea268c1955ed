"""Run the gateway: the transports on one event loop with the models loading behind them (or in worker
processes, gateway/workers), clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

from aiohttp import web
from grpc import aio

from gateway.config.settings import ServerSettings
from gateway.core.errors import ConfigError
from gateway.dataplane.api import GatewayApi
from gateway.dataplane.gateway import Gateway
from gateway.memory.ledger import SharedLedger
from gateway.security.restricted import ApiGuard
from gateway.security.tls import TlsCredentials
from gateway.transports.grpc.server import start_grpc_server
from gateway.transports.rest.server import start_metrics_server, start_rest_server
from gateway.workers.pool import WorkerPool, worker_counts

log = logging.getLogger(__name__)
REFUSE_LINGER_S = 0.25  # after the drain, how long new requests still get UNAVAILABLE before the ports close


@dataclass
class Transports:
    """The servers one process runs."""

    grpc_server: aio.Server | None = None
    runners: list[web.AppRunner] = field(default_factory=list)

    async def close(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1)
        for runner in self.runners:
            await runner.cleanup()


async def start_transports(
    api: GatewayApi,
    settings: ServerSettings,
    tls: TlsCredentials | None,
    guard: ApiGuard,
    *,
    grpc_port: int,
    rest_port: int,
    metrics_port: int = 0,
    shared_grpc: bool = False,
    shared_rest: bool = False,
) -> Transports:
    """Start the servers whose port is not 0, on `api` (a Gateway, or a worker's GatewayClient);
    `shared_grpc` / `shared_rest`: other processes of this gateway listen on that port too (SO_REUSEPORT)."""
    transports = Transports()
    scheme = "TLS" if tls is None or not tls.mutual else "mutual TLS"
    secured = f" ({scheme})" if tls is not None else ""
    if grpc_port:
        transports.grpc_server, port = await start_grpc_server(
            api,
            settings.grpc_bind_address,
            grpc_port,
            settings.grpc_max_message_bytes,
            max_concurrent_streams=settings.grpc_max_concurrent_streams,
            max_connections=settings.grpc_max_connections,
            max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
            credentials=tls.grpc_credentials() if tls is not None else None,
            guard=guard,
            reuse_port=shared_grpc,
        )
        log.info("gRPC server listening on %s:%d%s", settings.grpc_bind_address, port, secured)
    rest_tls = tls.server_context() if tls is not None else None
    if rest_port:
        runner, port = await start_rest_server(
            api,
            settings.rest_bind_address,
            rest_port,
            settings.rest_max_body_bytes,
            settings.rest_limits,
            rest_tls,
            guard,
            reuse_port=shared_rest,
        )
        transports.runners.append(runner)
        log.info("REST server listening on %s:%d%s", settings.rest_bind_address, port, secured)
    if metrics_port:
        runner, port = await start_metrics_server(
            api, settings.rest_bind_address, metrics_port, settings.rest_limits, rest_tls, guard
        )
        transports.runners.append(runner)
        log.info("metrics on %s:%d/metrics%s", settings.rest_bind_address, port, secured)
    return transports


async def serve(
    settings: ServerSettings,
    stop: asyncio.Event | None = None,
    single_model: bool = False,
    share_ports: bool = False,
) -> int:
    """Serve until `stop` is set or SIGTERM/SIGINT arrives; returns the process exit code. `share_ports`:
    listen with SO_REUSEPORT without worker processes, so that whole gateways can share the ports (the
    workers bench's contender in which nothing crosses between processes; not a way to serve, since each
    gateway compiles every model and counts only its own requests)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (in-process tests)
            pass

    pool: WorkerPool | None = None

    def on_config_reload() -> None:
        # OVMS's config reload re-reads the TLS files too (rotation with the poll turned off), in every
        # process that serves.
        if tls is not None:
            tls.refresh()
        if pool is not None:
            pool.notify_all("refresh_tls")

    try:
        tls = TlsCredentials(settings.tls) if settings.tls is not None else None
        guard = ApiGuard(settings.restricted_apis)
        workers = max(worker_counts(settings))
        ledger = SharedLedger.create(workers + 1) if workers else None
        pool = WorkerPool(settings, ledger)
        gateway = Gateway(
            settings,
            on_config_reload=on_config_reload,
            memory_ledger=ledger,
            replicas=pool if workers else None,
        )
    except ConfigError as e:  # e.g. a plugin library that OpenVINO cannot register
        log.error("configuration error: %s", e)
        return 2
    # Transports first, so health probes answer (not ready) while models compile.
    try:
        await pool.start(gateway)
    except (OSError, TimeoutError) as e:
        log.error("the worker processes could not start: %s", e)
        await pool.stop()
        return 2
    transports = await start_transports(
        gateway,
        settings,
        tls,
        guard,
        grpc_port=pool.grpc_port or settings.grpc_port,
        rest_port=pool.rest_port or settings.rest_port,
        metrics_port=settings.metrics_port,
        shared_grpc=share_ports or bool(pool.grpc_workers),
        shared_rest=share_ports or bool(pool.rest_workers),
    )
    if guard.active:
        log.info("restricted APIs: %s", ", ".join(guard.describe()))

    loading = asyncio.create_task(gateway.start())
    exit_code = 0
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    watcher = tls_watcher = None
    if loading in done:
        loading.result()
        await _log_summary(gateway)
        if settings.file_system_poll_wait_seconds > 0:
            watcher = asyncio.create_task(gateway.reloader.watch(settings.file_system_poll_wait_seconds))
            if tls is not None:
                tls_watcher = asyncio.create_task(tls.watch(settings.file_system_poll_wait_seconds))
        if single_model and not any(v.ready for v in gateway.manager.versions()):
            log.error("the only configured model could not be loaded; exiting")
            stop.set()
            exit_code = 1
        await stopping
    else:
        loading.cancel()

    for task in (watcher, tls_watcher):
        if task is not None:
            task.cancel()
    # Drain: readiness goes false and new requests get UNAVAILABLE / 503 at once, while the ones
    # already accepted finish (up to the drain timeout); only then do the transports close.
    in_flight = gateway.in_flight()
    log.info(
        "shutting down: %d request(s) in flight, draining for up to %.0f s",
        in_flight,
        settings.shutdown_timeout,
    )
    drained = all(
        await asyncio.gather(gateway.stop(settings.shutdown_timeout), pool.drain(settings.shutdown_timeout))
    )
    if not drained:
        log.warning("drain timeout: %d request(s) still in flight are cut off", gateway.in_flight())
    # The clients answered last in the drain send their next request at once. Closing the transports at
    # that instant makes grpc core cancel it (CANCELLED, which clients do not retry, and a test saw it);
    # refusing a moment longer gives them UNAVAILABLE, the answer that tells them to go elsewhere.
    await asyncio.sleep(min(REFUSE_LINGER_S, settings.shutdown_timeout))
    await pool.stop()
    await transports.close()
    log.info("stopped")
    return exit_code


async def _log_summary(gateway: Gateway) -> None:
    for row in await gateway.repository_index():
        if row.reason == "not loaded":  # a folder in the repository that no configuration asked for
            continue
        level = logging.INFO if row.state == "READY" else logging.ERROR
        log.log(
            level,
            "model %s version %s: %s%s",
            row.name,
            row.version or "-",
            row.state,
            f" ({row.reason})" if row.reason else "",
        )
