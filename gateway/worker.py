"""A worker process: the transports, on a GatewayClient that the owner process answers (gateway/workers).

    python -m gateway.worker CHANNEL_FD LEDGER_FD
        (started by the owner: its end of a socket pair, and the request-memory ledger all processes share)

It serves until the owner says `stop`. When the owner is gone it answers UNAVAILABLE / 503 for a moment
and exits non-zero; the owner's supervisor (or Kubernetes, when the owner died) starts things again.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time

from gateway.cli import configure_logging
from gateway.malloc_tuning import tune_malloc
from gateway.memory.budget import RequestMemoryBudget
from gateway.memory.ledger import SharedLedger
from gateway.security.restricted import ApiGuard
from gateway.security.tls import TlsCredentials
from gateway.serve import start_transports
from gateway.workers.channel import Channel
from gateway.workers.client import GatewayClient
from gateway.workers.pool import WorkerSetup

log = logging.getLogger(__name__)

OWNER_GONE_LINGER_S = 0.5  # how long a worker answers UNAVAILABLE after the owner died, before it exits
WORKER_CALLS = ("drain", "stop", "add_region", "remove_region", "forget_routes", "refresh_tls")


class WorkerEndpoint:
    """The calls the owner makes on this worker."""

    def __init__(self, stopped: asyncio.Event):
        self.client: GatewayClient | None = None
        self.tls: TlsCredentials | None = None
        self._stopped = stopped

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests; True once the accepted ones have finished, False after `timeout`."""
        assert self.client is not None
        self.client.stop_accepting()
        deadline = time.monotonic() + timeout
        while self.client.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.client.in_flight == 0

    def stop(self) -> None:
        self._stopped.set()

    def add_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        assert self.client is not None
        self.client.shared_memory.register(name, key, offset, byte_size)

    def remove_region(self, name: str) -> None:
        assert self.client is not None
        self.client.shared_memory.unregister(name)

    def forget_routes(self) -> None:
        if self.client is not None:
            self.client.forget_routes()

    def refresh_tls(self) -> None:
        if self.tls is not None:
            self.tls.refresh()


async def run_worker(fd: int, ledger_fd: int) -> int:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    owner_gone = False

    def on_lost(exc: Exception | None) -> None:
        nonlocal owner_gone
        if not stopped.is_set():
            owner_gone = True
            log.error("the owner process is gone; this worker exits")
            if endpoint.client is not None:
                endpoint.client.stop_accepting()
            loop.call_later(OWNER_GONE_LINGER_S, stopped.set)

    endpoint = WorkerEndpoint(stopped)
    for sig in (signal.SIGINT, signal.SIGTERM):
        # The owner drives the shutdown: a Ctrl-C reaches the whole process group, and only the owner
        # may decide when a worker's ports close.
        loop.add_signal_handler(sig, lambda: None)
    _, channel = await loop.create_unix_connection(
        lambda: Channel(handler=endpoint, exposed=WORKER_CALLS, on_lost=on_lost, peer="owner"),
        sock=socket.socket(fileno=fd),
    )
    setup: WorkerSetup = await channel.call("hello")
    settings = setup.settings
    configure_logging(settings.log_level, settings.log_path, settings.log_format)
    client = GatewayClient(
        channel,
        memory_budget=RequestMemoryBudget(
            setup.memory_limit_bytes, SharedLedger.attach(ledger_fd, setup.index + 1, setup.memory_slots)
        ),
        allow_client_shm=settings.allow_client_shm,
    )
    for region in setup.regions:
        client.shared_memory.register(region.name, region.key, region.offset, region.byte_size)
    endpoint.client = client
    endpoint.tls = TlsCredentials(settings.tls) if settings.tls is not None else None
    tls_watcher = None
    if endpoint.tls is not None and settings.file_system_poll_wait_seconds > 0:
        tls_watcher = asyncio.create_task(endpoint.tls.watch(settings.file_system_poll_wait_seconds))
    transports = await start_transports(
        client,
        settings,
        endpoint.tls,
        ApiGuard(settings.restricted_apis),
        grpc_port=setup.grpc_port,
        rest_port=setup.rest_port,
        shared_grpc=True,
        shared_rest=True,
    )
    channel.notify("serving")
    await stopped.wait()
    if tls_watcher is not None:
        tls_watcher.cancel()
    await transports.close()
    channel.close()
    return 1 if owner_gone else 0


def main() -> int:
    tune_malloc()  # as the owner does: requests' buffers of a few MB must not each be a fresh mmap
    try:
        import uvloop

        return uvloop.run(run_worker(int(sys.argv[1]), int(sys.argv[2])))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(run_worker(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    sys.exit(main())
