"""A reverse proxy on loopback that counts what passes through it: requests (by method) and response bytes.

Put between the gateway and an object store, it says what loading and polling a repository cost in
requests and bytes, whatever the store's API. The Host header and the raw path and query go through unchanged,
so S3 signatures made for the proxy's address still verify at the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

# Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
}


@dataclass
class Counts:
    requests: Counter = field(default_factory=Counter)  # method -> requests
    response_bytes: int = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())


class CountingProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.counts = Counts()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._serve, name="counting-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def reset(self) -> Counts:
        """The counts so far, and start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, Counts()
        return counts

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:  # fmt: skip
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    response.headers[key] = value
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.content.iter_chunked(1 << 20):
                sent += len(chunk)
                await response.write(chunk)
            await response.write_eof()
        with self._lock:
            self.counts.requests[request.method] += 1
            self.counts.response_bytes += sent
        return response

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
