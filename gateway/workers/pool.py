"""The owner's side of the worker processes: started, answered, told to drain, replaced when they die.

The owner process keeps the devices (models, schedulers, batching, priorities, pipelines, the repository,
metrics and statistics) and serves the transports as well; the worker processes beside it serve gRPC
and/or REST on the same ports (SO_REUSEPORT), decode and encode, and call the owner's Gateway through a
GatewayClient (client.py). The kernel spreads the connections over every process listening on a port, so
a request on one of the owner's own connections crosses no process at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from gateway.config.settings import ServerSettings
from gateway.core.errors import Unavailable
from gateway.core.records import Interface, Method
from gateway.dataplane.gateway import Gateway
from gateway.dataplane.servable_view import ServableView
from gateway.memory.ledger import SharedLedger
from gateway.memory.shared_memory import RegionStatus
from gateway.observability.statistics import Outcome
from gateway.scheduling.scheduler import WhenFull
from gateway.workers.channel import Channel
from gateway.workers.wire import pack_response, unpack_request

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # a worker that keeps dying is restarted ever more slowly
STOP_TIMEOUT_S = 10.0  # after `stop`, how long a worker may take to close before it is killed

# What a worker may call on the owner (the Gateway's calls, and the worker's own life cycle).
OWNER_CALLS = (
    "hello", "serving", "ready", "server_metadata", "model_ready", "model_metadata", "model_config",
    "statistics", "repository_index", "served_names", "render_metrics", "load_model", "unload_model",
    "reload_config", "register_shared_memory", "unregister_shared_memory", "route", "infer_admitted",
    "account", "wait_for_room", "count_unrouted",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker is told when it starts: the settings, which transports it serves, and on which ports."""

    settings: ServerSettings
    index: int
    grpc_port: int  # 0: this worker does not serve gRPC
    rest_port: int  # 0: this worker does not serve REST
    memory_limit_bytes: int
    memory_slots: int  # processes sharing the request memory bound: the owner in slot 0, worker i in i + 1
    regions: tuple[RegionStatus, ...]  # Triton's system shared-memory regions registered so far


def worker_counts(settings: ServerSettings) -> tuple[int, int]:
    """How many worker processes serve gRPC and REST beside the owner, which serves every transport that
    is on: `--grpc_workers N` is N processes on the port, the owner one of them."""
    grpc = settings.grpc_workers - 1 if settings.grpc_port else 0
    rest = settings.rest_workers - 1 if settings.rest_port else 0
    return grpc, rest


class OwnerEndpoint:
    """The owner's calls, as one worker's channel sees them: the Gateway's, plus the pool's."""

    def __init__(self, pool: WorkerPool, index: int):
        self._pool = pool
        self._gateway = pool.gateway
        self._index = index

    def hello(self) -> WorkerSetup:
        return self._pool.setup(self._index)

    def serving(self) -> None:
        self._pool.worker_serving(self._index)

    async def ready(self) -> bool:
        return await self._gateway.ready()

    async def server_metadata(self):
        return await self._gateway.server_metadata()

    async def model_ready(self, name: str, version: str, interface: Interface | None) -> bool:
        return await self._gateway.model_ready(name, version, interface)

    async def model_metadata(self, name: str, version: str, interface: Interface | None):
        return await self._gateway.model_metadata(name, version, interface)

    async def model_config(self, name: str, version: str) -> dict:
        return await self._gateway.model_config(name, version)

    async def statistics(self, name: str, version: str) -> list[dict]:
        return await self._gateway.statistics(name, version)

    async def repository_index(self, ready_only: bool):
        return await self._gateway.repository_index(ready_only)

    async def served_names(self) -> list[str]:
        return await self._gateway.served_names()

    async def render_metrics(self) -> str:
        return await self._gateway.render_metrics()

    # The Gateway tells every worker of what these change (the pool is its Replicas).

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        await self._gateway.load_model(name, parameters)

    async def unload_model(self, name: str) -> None:
        await self._gateway.unload_model(name)

    async def reload_config(self) -> dict[str, str]:
        return await self._gateway.reload_config()

    async def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self._gateway.register_shared_memory(name, key, offset, byte_size)

    async def unregister_shared_memory(self, name: str) -> None:
        await self._gateway.unregister_shared_memory(name)

    async def route(self, name: str, version: str, interface: Interface | None) -> ServableView:
        return ServableView.of(await self._gateway.route(name, version, interface))

    async def infer_admitted(self, request: tuple, deadline: float | None, when_full: str) -> tuple:
        response = await self._gateway.infer_admitted(
            unpack_request(request), deadline=deadline, when_full=WhenFull(when_full)
        )
        return pack_response(response)

    def account(self, name: str, version: str, interface: str | None, outcome: str, ns: int) -> None:
        self._gateway.account(
            name, version, None if interface is None else Interface(interface), Outcome(outcome), ns
        )

    async def wait_for_room(self, name: str, version: str) -> None:
        await self._gateway.wait_for_room(name, version)

    def count_unrouted(self, interface: Interface | None, method: Method) -> None:
        self._gateway.count_unrouted(interface, method)


class _Worker:
    __slots__ = ("index", "process", "channel", "serving", "restarts")

    def __init__(self, index: int):
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.serving = asyncio.get_running_loop().create_future()
        self.restarts = 0


class WorkerPool:
    """The worker processes, and the Gateway's Replicas: what the Gateway changes that workers copy."""

    gateway: Gateway  # the one the workers call, from start() on

    def __init__(self, settings: ServerSettings, ledger: SharedLedger | None):
        """`ledger`: the request memory of the owner and every worker (None when there are no workers)."""
        self.settings = settings
        self._ledger = ledger
        self.grpc_workers, self.rest_workers = worker_counts(settings)
        self._workers: list[_Worker] = []
        self._placeholders: list[socket.socket] = []
        self.grpc_port = settings.grpc_port if self.grpc_workers else 0
        self.rest_port = settings.rest_port if self.rest_workers else 0
        self._supervisors: set[asyncio.Task] = set()
        self._stopping = False

    @property
    def size(self) -> int:
        return max(self.grpc_workers, self.rest_workers)

    async def start(self, gateway: Gateway, timeout: float = 60.0) -> None:
        """Start the workers, which call `gateway`; returns once each listens on its ports."""
        self.gateway = gateway
        if not self.size:
            return
        cores = len(os.sched_getaffinity(0))
        if self.size + 1 > cores:
            log.warning("%d serving processes on %d cores: more processes than cores only add overhead",
                        self.size + 1, cores)  # fmt: skip
        # The ports are bound here first: one in use by another program fails now, with its address, and a
        # port given as 0 is chosen once and shared (every process binds the one it was told).
        if self.grpc_workers:
            self.grpc_port = self._reserve(self.settings.grpc_bind_address, self.grpc_port)
        if self.rest_workers:
            self.rest_port = self._reserve(self.settings.rest_bind_address, self.rest_port)
        self._workers = [_Worker(i) for i in range(self.size)]
        for worker in self._workers:
            await self._spawn(worker)
        await asyncio.wait_for(asyncio.gather(*(w.serving for w in self._workers)), timeout)
        log.info(
            "%d worker process(es) beside this one: gRPC served by %d processes, REST by %d",
            self.size,
            self.grpc_workers + 1 if self.grpc_port else 0,
            self.rest_workers + 1 if self.rest_port else 0,
        )

    def _reserve(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        # SO_REUSEADDR as every server sets it: connections of a gateway stopped a moment ago linger in
        # TIME_WAIT on this port, and would refuse the bind for a minute.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from e
        self._placeholders.append(sock)  # bound, never listening: it takes no connection
        return sock.getsockname()[1]

    def setup(self, index: int) -> WorkerSetup:
        return WorkerSetup(
            settings=self.settings,
            index=index,
            grpc_port=self.grpc_port if index < self.grpc_workers else 0,
            rest_port=self.rest_port if index < self.rest_workers else 0,
            memory_limit_bytes=self.gateway.memory_budget.limit_bytes,
            memory_slots=self.size + 1,
            regions=tuple(self.gateway.shared_memory.status()),
        )

    def worker_serving(self, index: int) -> None:
        worker = self._workers[index]
        if not worker.serving.done():
            worker.serving.set_result(None)
        worker.restarts = 0

    async def _spawn(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        assert self._ledger is not None  # a pool with workers has one
        self._ledger.clear(worker.index + 1)  # what a dead predecessor's requests held is gone
        fds = (theirs.fileno(), self._ledger.fd)
        with theirs:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.worker", *map(str, fds), pass_fds=fds
            )
        _, channel = await loop.create_unix_connection(
            lambda: Channel(
                handler=OwnerEndpoint(self, worker.index),
                exposed=OWNER_CALLS,
                on_lost=lambda exc: None,
                peer=f"worker {worker.index}",
            ),
            sock=mine,
        )
        worker.channel = channel
        task = asyncio.create_task(self._supervise(worker, worker.process))
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)

    async def _supervise(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self._stopping:
            return
        if not worker.serving.done():  # it never served: starting again would fail the same way
            failed = OSError(f"worker process {worker.index} exited with {code} at start")
            worker.serving.set_exception(failed)
            return
        delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
        log.error("worker process %d (pid %d) exited with %d; restarting it in %.1f s",
                  worker.index, process.pid, code, delay)  # fmt: skip
        if worker.channel is not None:
            worker.channel.close()
        worker.restarts += 1
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(worker)

    async def add_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self.broadcast("add_region", name, key, offset, byte_size)

    async def remove_region(self, name: str) -> None:
        await self.broadcast("remove_region", name)

    def forget_routes(self) -> None:
        """Models changed: workers ask again where a name routes."""
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.notify("forget_routes")

    async def broadcast(self, method: str, *args: Any) -> None:
        """Call every live worker and wait for all (a worker that is gone or restarting is skipped: it
        reads the current state at its hello)."""
        calls = [w.channel.call(method, *args) for w in self._workers if w.channel and not w.channel.closed]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, Unavailable):
                raise result

    def notify_all(self, method: str, *args: Any) -> None:
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.notify(method, *args)

    async def drain(self, timeout: float) -> bool:
        """Every worker refuses new requests (UNAVAILABLE / 503) and finishes the ones it accepted; True
        when all finished within `timeout`."""
        results = await asyncio.gather(
            *(w.channel.call("drain", timeout) for w in self._workers if w.channel and not w.channel.closed),
            return_exceptions=True,
        )
        return all(r is True for r in results)

    async def stop(self) -> None:
        """Close every worker's ports and wait for it to exit (killed after STOP_TIMEOUT_S)."""
        self._stopping = True
        self.notify_all("stop")
        processes = [w.process for w in self._workers if w.process is not None]
        waits = [asyncio.create_task(p.wait()) for p in processes]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)
            for process in processes:
                if process.returncode is None:
                    log.warning("worker pid %d did not stop in time; killing it", process.pid)
                    process.kill()
            if pending:
                await asyncio.wait(pending)
        for worker in self._workers:
            if worker.channel is not None:
                worker.channel.close()
        for task in self._supervisors:
            task.cancel()
        for sock in self._placeholders:
            sock.close()
        if self._ledger is not None:
            self._ledger.close()
