"""JSON documents from clients, parsed within a nesting limit.

A request body nested a thousand levels deep is a client's mistake (or an attack), not a server fault:
Python's parser answers it with RecursionError, which would become a 500. The limit is checked before
parsing, by a scan that touches only brackets and strings, and only for a document that has more brackets
than the limit allows at all (almost every inference request has a handful).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.core.errors import InvalidArgument

# A KServe inference body nests 3 levels plus the rank of a nested `data` array (OpenVINO tensors have
# rank <= 8 in practice); 64 leaves room for parameters and the repository API's config objects.
MAX_JSON_DEPTH = 64

# A string (skipped whole: brackets inside it do not nest) or one bracket.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENING = frozenset(b"[{")
_CLOSING = frozenset(b"]}")


def nesting_depth_exceeds(text: bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `text`, read as JSON, nests arrays and objects deeper than `limit`. Exact for valid JSON;
    for invalid JSON the answer does not matter, since the parser refuses it anyway."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(text):
        char = text[match.start()]
        if char in _OPENING:
            depth += 1
            if depth > limit:
                return True
        elif char in _CLOSING:
            depth -= 1
    return False


def parse_json(text: bytes | bytearray | memoryview | str, what: str) -> Any:
    """Parse a client's JSON document; InvalidArgument (naming `what`) when it is not valid JSON or nests
    deeper than MAX_JSON_DEPTH."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    if nesting_depth_exceeds(data):
        raise InvalidArgument(f"{what} nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    except RecursionError:  # only if the stack is already deep where this is called: still the client's
        raise InvalidArgument(f"{what} nests arrays or objects too deeply") from None
