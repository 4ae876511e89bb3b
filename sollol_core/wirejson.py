"""JSON on the request path: every client body and every chunk of every answer passes here.

orjson parses and writes the small objects of a chunk several times faster than the standard
library (a streamed answer is one object per token, decoded from the node and encoded for the
client). Its output is compact and keeps non-ASCII text as UTF-8, as Ollama's own is. Where it
refuses what the standard library takes (integers past 64 bits, NaN, keys that are not strings),
the standard library does the work, so nothing a node or a client could send before is refused
now, and a malformed body still gets the standard library's message with its position.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON; ``default`` turns other objects into what JSON can hold."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=default).encode()
