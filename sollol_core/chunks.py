"""Ollama-shaped chunks, the core's currency between executors and front-ends.

Backends stream generations in pieces even when the client asked for one answer (so that the
router can tell a slow healthy node from a hung one); :func:`fold` joins the pieces into the
single response object Ollama itself sends for a non-streamed request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sollol_core.hookspecs import Chunk
from sollol_core.types import Operation


def fold(operation: Operation, chunks: Sequence[Chunk]) -> dict[str, Any]:
    """One response from the chunks of a streamed one: text, thinking, tool calls and log
    probabilities joined in order, everything else (``done``, counts, ``context``) from the last
    chunk. A single chunk is returned as it is."""
    if not chunks:
        return {}
    final = dict(chunks[-1])
    if len(chunks) == 1:
        return final
    if operation is Operation.CHAT:
        messages = [c.get("message") or {} for c in chunks]
        message = dict(messages[-1]) or {"role": "assistant"}
        _join_text(message, messages, "content")
        calls = [call for m in messages for call in m.get("tool_calls") or ()]
        if calls:
            message["tool_calls"] = calls
        final["message"] = message
    elif operation is Operation.GENERATE:
        _join_text(final, chunks, "response")
    logprobs = [p for c in chunks for p in c.get("logprobs") or ()]
    if logprobs:
        final["logprobs"] = logprobs
    return final


def _join_text(into: dict[str, Any], pieces: Sequence[Chunk], field: str) -> None:
    """``field`` (always) and ``thinking`` (when any piece thought) joined over ``pieces``."""
    into[field] = "".join(str(p.get(field) or "") for p in pieces)
    thinking = "".join(str(p.get("thinking") or "") for p in pieces)
    if thinking:
        into["thinking"] = thinking
