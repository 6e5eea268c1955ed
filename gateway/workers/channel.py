"""Calls in both directions between the owner process and one worker process, over a Unix socket.

A frame is a 4-byte little-endian length and a pickle (protocol 5) of one message tuple:

    (CALL, call_id, method, args)     answered by (REPLY, call_id, ok, value or exception)
    (NOTIFY, 0, method, args)         not answered

Both ends are this package's own processes, started by the owner on a socket pair it created, so pickle
crosses no trust boundary. Frames written in one event-loop iteration leave in one writev: under load a
read carries many requests, and a request costs a fraction of a system call.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import pickle
import struct
from collections.abc import Callable, Collection
from typing import Any

from gateway.core.errors import GatewayError, InternalError, Unavailable

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
MAX_FRAME_BYTES = 2**32 - 1


class Kind(enum.IntEnum):
    CALL = 0
    REPLY = 1
    NOTIFY = 2
    CANCEL = 3  # the caller gave up on a call (its client went away): cancel what it started


# Plain ints on the wire: an enum member pickles as a reference to its class, a few us each.
_CALL, _REPLY, _NOTIFY, _CANCEL = int(Kind.CALL), int(Kind.REPLY), int(Kind.NOTIFY), int(Kind.CANCEL)


class Channel(asyncio.Protocol):
    """One end. `handler`'s methods named in `exposed` answer the other end's calls (plain or async);
    `on_lost` runs once when the connection ends, with its cause."""

    def __init__(
        self,
        *,
        handler: object,
        exposed: Collection[str],
        on_lost: Callable[[Exception | None], None],
        peer: str,
    ):
        self._handler = handler
        self._exposed = frozenset(exposed)
        self._on_lost = on_lost
        self._peer = peer
        self._transport: Any = None  # uvloop's Unix transport is not an asyncio.Transport subclass
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self._tasks: dict[int, asyncio.Task] = {}  # the other end's calls running here, by call id
        self._notified: set[asyncio.Task] = set()
        self._closed = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start, end = 0, len(buffer)
        view = memoryview(buffer)
        try:
            while end - start >= 4:
                (length,) = _LENGTH.unpack_from(buffer, start)
                if end - start - 4 < length:
                    break
                message = pickle.loads(view[start + 4 : start + 4 + length])
                start += 4 + length
                self._receive(message)
        finally:
            view.release()
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        gone = Unavailable(f"the {self._peer} process is gone")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        self._pending.clear()
        self._on_lost(exc)

    # --- calling the other end -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, method: str, *args: Any) -> Any:
        """The other end's `method(*args)`; its GatewayError is raised here as it was raised there."""
        if self._closed:
            raise Unavailable(f"the {self._peer} process is gone")
        call_id = self._next_id
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._send((_CALL, call_id, method, args))
            return await future
        except asyncio.CancelledError:
            if not self._closed:
                self._send((_CANCEL, call_id, None, None))
            raise
        finally:
            self._pending.pop(call_id, None)

    def notify(self, method: str, *args: Any) -> None:
        if not self._closed:
            self._send((_NOTIFY, 0, method, args))

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    # --- inside --------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        payload = pickle.dumps(message, protocol=5)
        if len(payload) > MAX_FRAME_BYTES:
            raise InternalError(f"a message of {len(payload)} bytes cannot cross to the {self._peer}")
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing += (_LENGTH.pack(len(payload)), payload)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(outgoing)

    def _receive(self, message: tuple) -> None:
        kind, call_id, first, rest = message
        if kind == _REPLY:
            future = self._pending.get(call_id)
            if future is not None and not future.done():
                ok, value = first, rest
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            return
        if kind == _CANCEL:
            running = self._tasks.get(call_id)
            if running is not None:
                running.cancel()
            return
        method, args = first, rest
        if method not in self._exposed:
            result: Any = InternalError(f"'{method}' is not a call the {self._peer} may make")
            if kind == _CALL:
                self._send((_REPLY, call_id, False, result))
            return
        try:
            result = getattr(self._handler, method)(*args)
        except Exception as e:
            self._answer(kind, call_id, method, e)
            return
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(self._finish(kind, call_id, method, result))
            if kind == _CALL:
                self._tasks[call_id] = task
                task.add_done_callback(lambda _: self._tasks.pop(call_id, None))
            else:  # held until done: the loop keeps only a weak reference to a task
                self._notified.add(task)
                task.add_done_callback(self._notified.discard)
        elif kind == _CALL:
            self._reply(call_id, method, result)

    async def _finish(self, kind: int, call_id: int, method: str, coroutine) -> None:
        try:
            result = await coroutine
        except asyncio.CancelledError:
            return  # the caller cancelled it, and waits for no answer
        except Exception as e:
            self._answer(kind, call_id, method, e)
            return
        if kind == _CALL:
            self._reply(call_id, method, result)

    def _reply(self, call_id: int, method: str, result: Any) -> None:
        try:
            self._send((_REPLY, call_id, True, result))
        except Exception as e:  # e.g. a result that cannot be pickled: the caller must not wait forever
            self._answer(_CALL, call_id, method, e)

    def _answer(self, kind: int, call_id: int, method: str, error: Exception) -> None:
        if not isinstance(error, GatewayError):
            log.error("%s from the %s failed", method, self._peer, exc_info=error)
            error = InternalError(f"internal error: {type(error).__name__}: {error}")
        if kind == _CALL:
            self._send((_REPLY, call_id, False, error))
