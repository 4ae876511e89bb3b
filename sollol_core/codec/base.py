"""What every part of the codec shares: its error, the chunk type, one JSON encoding, one clock."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: An Ollama-shaped chunk (or a whole Ollama body), read-only.
Chunk = Mapping[str, Any]


class InvalidRequest(ValueError):
    """An OpenAI request is well-typed but still wrong; the message is for the client (400)."""


def dumps(value: Any) -> str:
    """JSON as Ollama writes it into OpenAI shapes: compact, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def now_rfc3339() -> str:
    """Ollama's ``created_at``: UTC, RFC 3339 with fractions."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
