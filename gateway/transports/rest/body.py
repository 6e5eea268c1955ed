"""Reading a REST request body within the size limit, undoing its Content-Encoding as it arrives.

aiohttp's own decompression is turned off (`auto_decompress=False`) so that the limit holds on both sides of
a compressed body: a declared Content-Length above the limit is refused before a byte is read, and a gzip
body is inflated piece by piece, each piece at most what the limit still allows, so a decompression bomb
costs at most the limit in memory and is refused the moment it passes it. Encodings: gzip and deflate
(what tritonclient sends, and what Triton accepts) and identity; any other is 415.
"""

from __future__ import annotations

import asyncio
import mmap
import zlib

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from gateway.core.errors import InvalidArgument, TooLarge, UnsupportedMediaType
from gateway.memory.budget import Charge

# Inflate in pieces of at most this much, yielding to the event loop between them: a body of zeros can
# inflate 1000-fold, and other requests should not wait for the whole of it.
INFLATE_PIECE_BYTES = 1 << 20


# A body past this size moves from a bytearray to an anonymous mapping grown in place (see _Body).
SMALL_BODY_BYTES = 1 << 20


class _Body:
    """A body as it arrives: a bytearray while small, then an anonymous private mapping grown with mremap.
    A growing bytearray is reallocated (copied, and on the heap both copies are held a moment, and the old
    one kept for reuse), so a large body held about twice its size; a mapping's growth copies nothing, its
    capacity costs no memory until written, and it is unmapped when the request lets go of its views."""

    __slots__ = ("_small", "_map", "size")

    def __init__(self) -> None:
        self._small = bytearray()
        self._map: mmap.mmap | None = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes | bytearray) -> None:
        count = len(data)
        if self._map is None:
            if self.size + count <= SMALL_BODY_BYTES:
                self._small += data
                self.size += count
                return
            self._map = mmap.mmap(
                -1, max(4 * SMALL_BODY_BYTES, 2 * (self.size + count)), flags=mmap.MAP_PRIVATE
            )
            self._map[: self.size] = self._small
            self._small = bytearray()
        end = self.size + count
        if end > len(self._map):
            self._map.resize(max(end, 2 * len(self._map)))
        self._map[self.size : end] = data
        self.size = end

    def contents(self) -> bytearray | memoryview:
        """The body: writable, and what decoded arrays are views of."""
        if self._map is None:
            return self._small
        return memoryview(self._map)[: self.size]


class UnreadableBody(InvalidArgument):
    """The body could not be read to its end (e.g. not the gzip it claims): the connection cannot be
    reused."""


class BodyTooLarge(TooLarge):
    """The body is over the size limit; its rest is not read, so the connection cannot be reused."""


class UnsupportedEncoding(UnsupportedMediaType):
    """A Content-Encoding the server does not undo; the body is not read."""


def _decompressor(encoding: str, first: bytes):
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # HTTP's "deflate" is the zlib format, but some clients send raw deflate: the zlib header tells.
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and ((first[0] << 8) | first[1]) % 31 == 0
    return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


def content_encoding(request: web.Request) -> str:
    """The body's one content coding ("" for none); refuses what this server does not undo."""
    value = request.headers.get("Content-Encoding", "").strip().lower()
    if value in ("", "identity"):
        return ""
    if value in ("gzip", "x-gzip", "deflate"):
        return value
    raise UnsupportedEncoding(
        f"Content-Encoding '{value}' is not supported; send the body as is, gzip or deflate"
    )


async def read_body(request: web.Request, limit: int, charge: Charge | None = None) -> bytearray | memoryview:
    """The whole body (its gzip/deflate Content-Encoding undone) in one writable buffer; failures as
    GatewayErrors. `limit` (0 = none) bounds both the bytes on the wire and the decoded bytes.

    This is the one copy of a tensor byte between the socket and OpenVINO on REST: the chunks are appended
    to one buffer (_Body: grown in place), and arrays decoded from it are writable views of it, which
    OpenVINO's tensors share. Nothing is allocated ahead of the bytes that arrive: a Content-Length is a
    claim, not a size to reserve. `charge`: the request's account with the memory budget, grown before
    each piece is appended (MemoryBudgetExceeded when the server's requests hold too much)."""
    encoding = content_encoding(request)
    declared = request.content_length
    if limit and declared is not None and declared > limit:
        raise BodyTooLarge(f"the request body ({declared} bytes) is larger than the limit of {limit} bytes")
    body = _Body()
    inflate = None
    try:
        while chunk := await request.content.readany():
            if not encoding:
                if charge is not None:
                    charge.grow(len(chunk), "the request body")
                body.append(chunk)
                if limit and len(body) > limit:
                    raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
                continue
            if inflate is None:
                inflate = _decompressor(encoding, chunk)
            await _inflate_into(body, inflate, chunk, limit, encoding, charge)
    except (RequestPayloadError, BadHttpMessage) as e:
        raise UnreadableBody(f"cannot read the request body: {e}") from None
    if inflate is not None and not inflate.eof:
        raise UnreadableBody(f"the {encoding} body ends before its compressed stream does")
    return body.contents()


async def _inflate_into(
    body: _Body, inflate, data: bytes, limit: int, encoding: str, charge: Charge | None
) -> None:
    """Inflate `data` onto `body` a piece at a time: a small body on the event loop, the pieces past its
    first MiB in a thread, where zlib runs without the GIL, so other requests keep their latency."""
    pending = data
    while pending:
        if inflate.eof:
            raise UnreadableBody(f"the request body has bytes after the end of its {encoding} stream")
        allowed = INFLATE_PIECE_BYTES if not limit else min(INFLATE_PIECE_BYTES, limit - len(body) + 1)
        if charge is not None:
            charge.grow(allowed, f"the request body, inflated ({encoding})")  # before it is allocated
        try:
            if len(body) < INFLATE_PIECE_BYTES:
                piece = inflate.decompress(pending, allowed)
            else:
                piece = await asyncio.to_thread(inflate.decompress, pending, allowed)
        except zlib.error as e:
            raise UnreadableBody(f"the request body is not valid {encoding} data: {e}") from None
        if charge is not None:
            charge.give_back(allowed - len(piece))  # what the piece did not use
        body.append(piece)
        if inflate.unused_data:
            raise UnreadableBody(f"the request body has bytes after the end of its {encoding} stream")
        if limit and len(body) > limit:
            raise BodyTooLarge(
                f"the request body inflates to more than the limit of {limit} bytes ({encoding})"
            )
        pending = inflate.unconsumed_tail
