"""Streamed replies, Ollama's chunks and OpenAI's events, both ways, one piece at a time.

:class:`StreamEncoder` turns Ollama chunks into OpenAI stream events as the gateway relays them;
:class:`StreamDecoder` turns a backend's OpenAI stream events into Ollama chunks. Both run once
per chunk: they copy nothing they do not send.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from attrs import define, field

from sollol_core.codec.base import Chunk
from sollol_core.codec.messages import decode_reply_tool_calls, encode_reply_tool_calls
from sollol_core.codec.replies import (
    FINGERPRINT,
    Kind,
    decode_finish,
    decode_usage,
    encode_finish,
    encode_usage,
    model_of,
    piece,
    text_of,
)

Event = dict[str, Any]  # one OpenAI stream chunk


@define
class StreamEncoder:
    """Turns Ollama chunks into OpenAI stream events as they arrive.

    The first delta carries ``role: assistant``; the finish reason comes in a separate chunk with
    an empty delta (empty text for completions); with ``include_usage`` one more chunk has no
    choices and the usage. The caller writes ``[DONE]`` after :meth:`close`.
    """

    kind: Kind
    id: str
    model: str
    include_usage: bool = False
    created: int = field(factory=lambda: int(time.time()))
    _started: bool = False
    _tool_calls: int = 0
    _finished: bool = False

    def feed(self, chunk: Chunk) -> list[Event]:
        """The events for one chunk; a ``done`` chunk also gives the closing ones."""
        if self._finished:
            return []
        self.model = model_of(chunk, self.model)
        text, thinking, calls = text_of(chunk, self.kind)
        events: list[Event] = []
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if not self._started:
                delta["role"] = "assistant"
            if text or not self._started:
                delta["content"] = text
            if thinking:
                delta["reasoning"] = thinking
            if calls:
                delta["tool_calls"] = encode_reply_tool_calls(calls, self._tool_calls)
                self._tool_calls += len(calls)
            if delta:
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                if chunk.get("logprobs"):
                    choice["logprobs"] = {"content": list(chunk["logprobs"])}
                events.append(self._event([choice]))
                self._started = True
        elif text:
            events.append(self._event([{"text": text, "index": 0, "logprobs": None,
                                        "finish_reason": None}]))
        if chunk.get("done"):
            events.extend(self._close(chunk))
        return events

    def close(self) -> list[Event]:
        """The closing events, if the stream ended without a ``done`` chunk."""
        return [] if self._finished else self._close(None)

    def _close(self, final: Chunk | None) -> list[Event]:
        self._finished = True
        empty: dict[str, Any] = ({"delta": {}} if self.kind == "chat" else
                                 {"text": "", "logprobs": None})
        reason = encode_finish(final, self._tool_calls > 0)
        events = [self._event([{"index": 0, **empty, "finish_reason": reason}])]
        if self.include_usage:
            events.append({**self._event([]), "usage": encode_usage(final)})
        return events

    def _event(self, choices: list[dict[str, Any]]) -> Event:
        return {"id": self.id,
                "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT, "choices": choices}


class StreamDecoder:
    """Turns OpenAI stream events (chat or completion) into Ollama chunks as they arrive.

    Text and thinking go out at once (``done: false``); tool calls come in pieces (a call's
    ``index`` ties its pieces, its arguments arrive as fragments of a JSON string) and go on the
    final chunk, which :meth:`close` gives with the finish reason and :meth:`metrics` of the last
    event. ``chat`` picks the chunks' shape (``message`` or ``response``), whichever endpoint
    the events came from.
    """

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.finish: Any = None
        self.last: Mapping[str, Any] = {}
        self.calls: list[dict[str, Any]] = []  # OpenAI-shaped, arguments joined
        self._by_index: dict[int, dict[str, Any]] = {}

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Chunks to send for one event (often one, sometimes none)."""
        out: list[dict[str, Any]] = []
        for choice in event.get("choices") or ():
            delta = choice.get("delta")
            if delta is None:
                text, thinking = choice.get("text"), None
            else:
                text = delta.get("content")
                thinking = delta.get("reasoning_content") or delta.get("reasoning")
                if delta.get("tool_calls"):
                    self._add_calls(delta["tool_calls"])
            if text or thinking:
                chunk = piece(self.model, self.chat, text or "", thinking, done=False)
                logprobs = choice.get("logprobs")
                if isinstance(logprobs, dict) and logprobs.get("content"):
                    chunk["logprobs"] = logprobs["content"]
                out.append(chunk)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        self.last = event
        return out

    def _add_calls(self, deltas: list[Any]) -> None:
        for delta in deltas:
            index = delta.get("index")
            call = self._by_index.get(index) if isinstance(index, int) else None
            if call is None:
                call = {"id": None, "function": {"name": "", "arguments": ""}}
                self.calls.append(call)
                if isinstance(index, int):
                    self._by_index[index] = call
            if delta.get("id"):
                call["id"] = delta["id"]
            function, into = delta.get("function") or {}, call["function"]
            if function.get("name"):
                into["name"] = function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str) and isinstance(into["arguments"], str):
                into["arguments"] += arguments
            elif arguments is not None:
                into["arguments"] = arguments

    def metrics(self, last: Mapping[str, Any]) -> dict[str, Any]:
        """The counts for the final chunk, from the last event (its ``usage``)."""
        return decode_usage(last.get("usage"))

    def close(self) -> dict[str, Any]:
        """The final ``done: true`` chunk."""
        chunk = piece(self.model, self.chat, "", None, done=True)
        calls = decode_reply_tool_calls(self.calls)
        if calls and self.chat:
            chunk["message"]["tool_calls"] = calls
        chunk["done_reason"] = decode_finish(self.finish)
        chunk.update(self.metrics(self.last))
        return chunk
