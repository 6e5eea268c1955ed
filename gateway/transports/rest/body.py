"""Reading a REST request body within the size limit, undoing its Content-Encoding as it arrives.

aiohttp's own decompression is turned off (`auto_decompress=False`) so that the limit holds on both sides of
a compressed body: a declared Content-Length above the limit is refused before a byte is read, and a gzip
body is inflated piece by piece, each piece at most what the limit still allows, so a decompression bomb
costs at most the limit in memory and is refused the moment it passes it. Encodings: gzip and deflate
(what tritonclient sends, and what Triton accepts) and identity; any other is 415.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from gateway.core.errors import InvalidArgument, TooLarge, UnsupportedMediaType

# Inflate in pieces of at most this much, yielding to the event loop between them: a body of zeros can
# inflate 1000-fold, and other requests should not wait for the whole of it.
INFLATE_PIECE_BYTES = 1 << 20


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


async def read_body(request: web.Request, limit: int) -> bytearray:
    """The whole body (its gzip/deflate Content-Encoding undone) in one writable buffer; failures as
    GatewayErrors. `limit` (0 = none) bounds both the bytes on the wire and the decoded bytes.

    This is the one copy of a tensor byte between the socket and OpenVINO on REST: the chunks are appended
    to one bytearray (grown in place), and arrays decoded from it are writable views of it, which
    OpenVINO's tensors share. Nothing is allocated ahead of the bytes that arrive: a Content-Length is a
    claim, not a size to reserve."""
    encoding = content_encoding(request)
    declared = request.content_length
    if limit and declared is not None and declared > limit:
        raise BodyTooLarge(f"the request body ({declared} bytes) is larger than the limit of {limit} bytes")
    body = bytearray()
    inflate = None
    try:
        while chunk := await request.content.readany():
            if not encoding:
                body += chunk
                if limit and len(body) > limit:
                    raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
                continue
            if inflate is None:
                inflate = _decompressor(encoding, chunk)
            await _inflate_into(body, inflate, chunk, limit, encoding)
    except (RequestPayloadError, BadHttpMessage) as e:
        raise UnreadableBody(f"cannot read the request body: {e}") from None
    if inflate is not None and not inflate.eof:
        raise UnreadableBody(f"the {encoding} body ends before its compressed stream does")
    return body


async def _inflate_into(body: bytearray, inflate, data: bytes, limit: int, encoding: str) -> None:
    pending = data
    while pending:
        if inflate.eof:
            raise UnreadableBody(f"the request body has bytes after the end of its {encoding} stream")
        allowed = INFLATE_PIECE_BYTES if not limit else min(INFLATE_PIECE_BYTES, limit - len(body) + 1)
        try:
            body += inflate.decompress(pending, allowed)
        except zlib.error as e:
            raise UnreadableBody(f"the request body is not valid {encoding} data: {e}") from None
        if inflate.unused_data:
            raise UnreadableBody(f"the request body has bytes after the end of its {encoding} stream")
        if limit and len(body) > limit:
            raise BodyTooLarge(
                f"the request body inflates to more than the limit of {limit} bytes ({encoding})"
            )
        pending = inflate.unconsumed_tail
        if pending:
            await asyncio.sleep(0)  # a large inflation: let other requests run between pieces
