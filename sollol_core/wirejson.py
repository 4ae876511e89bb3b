"""JSON on the request path: every client body and every chunk of every answer passes here.

orjson parses and writes the small objects of a chunk several times faster than the standard
library (a streamed answer is one object per token, decoded from the node and encoded for the
client). Its output is compact and keeps non-ASCII text as UTF-8, as Ollama's own is. Where it
refuses what the standard library takes (NaN, keys that are not strings, integers past 64 bits,
which it would even read as floats), the standard library does the work, so nothing a node or a
client could send before is refused now, and a malformed body still gets the standard
library's message with its position.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

#: 19 digits in a row may be an integer orjson would read as a float (past 64 bits it does,
#: silently): such text goes to the standard library, which keeps every digit. Found by mapping
#: every digit to "0" and everything else to " " (two passes in C; a regular expression cost
#: more than the parse itself).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_NUMBER = b"0" * 19


def loads(data: bytes | str) -> Any:
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_NUMBER not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON; ``default`` turns other objects into what JSON can hold."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=default).encode()
