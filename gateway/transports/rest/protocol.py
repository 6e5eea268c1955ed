"""The REST server's HTTP connections: JSON errors from the parser, timeouts, and a bound on connections.

aiohttp answers what its HTTP parser refuses (a bad method, a request line over 8 KB, a bad chunk size, a
duplicate Content-Length) with a plain-text page and logs each one as an ERROR with a traceback. A client's
malformed request is not a server fault: here it gets the protocol's `{"error": ...}` body, and the log a
line at DEBUG. The gateway's own faults keep ERROR with their traceback.

Slow and idle clients: a connection has `header_timeout_s` to send the rest of a request's head once its
first bytes arrived (408 otherwise, then closed), and `idle_timeout_s` between requests (aiohttp's
keep-alive timeout, which also covers a connection that never sends a byte). At most `max_connections`
are open: when a new one would pass the bound, the connection idle longest (no request in progress, e.g.
a half-sent head) is closed to make room, and only when every connection is busy is the new one refused
(503). Thousands of idle or half-sent connections therefore cannot keep a well-behaved client out.

This subclasses aiohttp's RequestHandler and reads two of its attributes (`_waiter`: the handler is
waiting for a request head, which is aiohttp's own definition of idle; `_request_count`: heads parsed);
the tests in tests/e2e/test_hostile_clients.py pin that behaviour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from gateway.config.settings import ConnectionLimits

log = logging.getLogger(__name__)


def _raw_json_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class GatewayRequestHandler(RequestHandler):
    """One HTTP connection (see the module's docstring)."""

    def __init__(self, manager: GatewayHttpServer, *, header_timeout_s: float, **kwargs):
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False  # over the connection bound: closed at once, never served
        self.idle_since = time.monotonic()

    @property
    def idle(self) -> bool:
        """Waiting for a request head: no request is being read, handled or answered."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def connection_made(self, transport) -> None:
        manager = self._manager
        if isinstance(manager, GatewayHttpServer) and not manager.make_room():
            transport.write(
                _raw_json_response(
                    503, "Service Unavailable", "too many open connections; retry on another connection later"
                )
            )
            transport.close()
            self._refused = True
            log.debug("refused a REST connection: %d connections are open and busy", manager.open_connections)
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        parsed_before = self._request_count
        super().data_received(data)
        if self._request_count != parsed_before:
            self._cancel_header_timer()
            self.idle_since = time.monotonic()
        elif self._header_timer is None and self._header_timeout_s > 0 and (self.idle or not parsed_before):
            # The first bytes of a head that has not ended yet (waiting for a request, or before the
            # first one: a body being uploaded or drained is neither).
            self._header_timer = self._loop.call_later(
                self._header_timeout_s, self._header_timed_out, parsed_before
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self, parsed_when_armed: int) -> None:
        self._header_timer = None
        if self._request_count != parsed_when_armed or self.transport is None:
            return
        log.debug("closing a REST connection: no complete request head in %s s", self._header_timeout_s)
        self.transport.write(
            _raw_json_response(
                408,
                "Request Timeout",
                f"the request head did not arrive within {self._header_timeout_s:g} s",
            )
        )
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None, message=None):
        """What aiohttp's parser refused, as the protocol's JSON error (the connection is closed)."""
        if isinstance(exc, HttpProcessingError) and status < 500:
            log.debug("bad HTTP request from %s: %s", request.remote, message or exc)
            text = str(message or getattr(exc, "message", "") or exc).strip().splitlines()
            detail = text[0] if text else "malformed request"
            response = web.json_response({"error": f"bad HTTP request: {detail}"}, status=status)
        else:
            log.error("error handling a REST request from %s", request.remote, exc_info=exc)
            response = web.json_response({"error": "internal error handling the request"}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args, **kwargs) -> None:
        """aiohttp's own log of a failure outside any handler: a client's protocol error is DEBUG."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError | ConnectionError):
            log.debug("%s: %s", args[0] if args else "HTTP error", exc)
            return
        super().log_exception(*args, **kwargs)


class GatewayHttpServer(web.Server):
    """aiohttp's server, making GatewayRequestHandler connections within ConnectionLimits."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def make_room(self) -> bool:
        """True when a new connection may open: under the bound, or after closing the connection idle
        longest; False when every open connection is busy."""
        bound = self.limits.max_connections
        if not bound or self.open_connections < bound:
            return True
        idle = [c for c in self.connections if isinstance(c, GatewayRequestHandler) and c.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        log.debug("closing the REST connection idle longest to make room for a new one")
        oldest.force_close()
        self._connections.pop(oldest, None)  # counted out now, not when its task ends
        return True

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(
            self, loop=self._loop, header_timeout_s=self.limits.header_timeout_s, **self._kwargs
        )


class GatewayAppRunner(web.AppRunner):
    """An AppRunner whose server is a GatewayHttpServer."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs):
        super().__init__(app, keepalive_timeout=limits.idle_timeout_s, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return GatewayHttpServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            limits=self._limits,
            **made._kwargs,  # what aiohttp gives each connection (access log, keep-alive, ...)
        )
