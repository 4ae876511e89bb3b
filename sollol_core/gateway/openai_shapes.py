"""OpenAI request and response shapes, converted to and from Ollama's: pure functions, no HTTP.

Requests are checked in two steps: the attrs classes give the types of the fields we read (for
``check_fields``; unknown keys are ignored), then ``*_body`` checks the rest and returns the body
in Ollama's field names. Responses are built from Ollama chunks, all at once (``*_response``) or
as they arrive (:class:`StreamConverter`). Defaults, messages and finish reasons follow Ollama's
own OpenAI layer.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import string
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from attrs import define, field, frozen

from sollol_core import convert

Chunk = Mapping[str, Any]
Event = dict[str, Any]  # one OpenAI stream chunk
Kind = Literal["chat", "completion"]
C = TypeVar("C")

FINGERPRINT = "fp_ollama"
IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png",
                                                                            "webp")))
REASONING_EFFORTS = ("high", "medium", "low", "none")


class InvalidRequest(ValueError):
    """The request is well-typed but still wrong; the message is shown to the client (400)."""


def _lenient(cls: type[C]) -> type[C]:
    """Nested request objects ignore unknown keys too (the shared converter rejects them)."""
    convert.converter.register_structure_hook(
        cls, lambda data, kind: convert.structure_lenient(data, kind))
    return cls


@_lenient
@frozen
class StreamOptions:
    include_usage: bool = False


@_lenient
@frozen
class JsonSchemaFormat:
    schema: Any = None


@_lenient
@frozen
class ResponseFormat:
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


@_lenient
@frozen
class Reasoning:
    effort: str | None = None


@frozen
class Sampling:
    """The sampling fields chat and completions share."""

    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Any = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


@frozen
class ChatFields(Sampling):
    messages: list[Any] = field(factory=list)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


@frozen
class CompletionFields(Sampling):
    prompt: str = ""
    suffix: str | None = None


@frozen
class EmbeddingFields:
    model: str = ""
    input: Any = None
    dimensions: int | None = None
    encoding_format: str | None = None


# -- requests ----------------------------------------------------------------------------------


def options(fields: Sampling) -> dict[str, Any]:
    """Ollama's ``options`` for OpenAI's sampling fields (temperature and top_p default to 1)."""
    found: dict[str, Any] = {}
    if fields.stop is not None:
        stops = [fields.stop] if isinstance(fields.stop, str) else fields.stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest(f"invalid type for 'stop' field: {fields.stop!r}")
        found["stop"] = stops
    found["num_predict"] = fields.max_completion_tokens
    if found["num_predict"] is None:
        found["num_predict"] = fields.max_tokens
    found["temperature"] = 1.0 if fields.temperature is None else fields.temperature
    found["top_p"] = 1.0 if fields.top_p is None else fields.top_p
    found.update(seed=fields.seed, frequency_penalty=fields.frequency_penalty,
                 presence_penalty=fields.presence_penalty)
    return {k: v for k, v in found.items() if v is not None}


def _base(fields: Sampling | EmbeddingFields) -> dict[str, Any]:
    if not fields.model:
        raise InvalidRequest("model is required")
    if isinstance(fields, EmbeddingFields):
        return {"model": fields.model}
    return {"model": fields.model, "stream": fields.stream, "options": options(fields)}


def chat_body(fields: ChatFields) -> dict[str, Any]:
    """The ``/api/chat`` body for a checked ``/v1/chat/completions`` request."""
    body = _base(fields)
    if not fields.messages:
        raise InvalidRequest("[] is too short - 'messages'")
    names: dict[str, str] = {}  # tool call id -> function, for tool results that omit the name
    body["messages"] = [m for i, raw in enumerate(fields.messages)
                        for m in _messages(i, raw, names)]
    kind = fields.response_format.type.strip().lower() if fields.response_format else ""
    schema = fields.response_format.json_schema if fields.response_format else None
    if kind == "json_object":
        body["format"] = "json"
    elif kind == "json_schema" and schema is not None and schema.schema is not None:
        if not isinstance(schema.schema, dict):
            raise InvalidRequest("invalid field 'response_format.json_schema.schema': "
                                 f"expected an object, got {schema.schema!r}")
        body["format"] = schema.schema
    if fields.tools:
        if not all(isinstance(tool, dict) for tool in fields.tools):
            raise InvalidRequest("invalid field 'tools': expected a list of objects")
        body["tools"] = fields.tools
    effort = fields.reasoning.effort if fields.reasoning is not None else fields.reasoning_effort
    if effort:
        if effort not in REASONING_EFFORTS:
            raise InvalidRequest(f"invalid reasoning value: '{effort}' "
                                 '(must be "high", "medium", "low", or "none")')
        body["think"] = False if effort == "none" else effort
    extra = {"logprobs": fields.logprobs, "top_logprobs": fields.top_logprobs}
    return body | {k: v for k, v in extra.items() if v is not None}


def _messages(index: int, raw: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    """One OpenAI message as Ollama messages (an array content gives one message per part)."""
    where = f"messages[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        raise InvalidRequest(f"invalid message format: {where} needs a string 'role'")
    role: str = raw["role"]
    reasoning = raw.get("reasoning") or raw.get("reasoning_content") or ""
    calls = _tool_calls_in(raw.get("tool_calls"), where)
    names.update((c["id"], c["function"]["name"]) for c in calls if "id" in c)
    tool_name = ""
    if role.lower() == "tool":
        tool_name = raw.get("name") or names.get(str(raw.get("tool_call_id")), "")
    content = raw.get("content")
    if isinstance(content, list):
        out = [_part(role, part, where) for part in content]
    elif isinstance(content, str) or (content is None and calls):
        out = [{"role": role, "content": content or ""}]
    else:
        raise InvalidRequest(f"invalid message content type: {type(content).__name__}")
    extra = {"tool_calls": calls, "tool_name": tool_name, "tool_call_id": raw.get("tool_call_id"),
             "thinking": reasoning}
    if out:  # like Ollama, what belongs to the whole message goes on its last part
        out[-1].update({k: v for k, v in extra.items() if v and isinstance(v, str | list)})
    return out


def _part(role: str, part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"role": role, "content": part["text"]}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InvalidRequest(f"invalid message format: {where} has an image without a url")
        prefix = next((p for p in IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise InvalidRequest("invalid image input")
        try:
            base64.b64decode(url[len(prefix):], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("invalid message format: the image is not base64") from None
        return {"role": role, "content": "", "images": [url[len(prefix):]]}
    raise InvalidRequest(f"invalid message format: {where} has a content part of type {kind!r}")


def _tool_calls_in(raw: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) as Ollama's (arguments as an object)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest(f"invalid message format: {where}.tool_calls must be a list")
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"invalid message format: {where} has a malformed tool call")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise InvalidRequest("invalid tool call arguments") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest("invalid tool call arguments")
        entry: dict[str, Any] = {"function": {"name": function["name"], "arguments": parsed}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


def completion_body(fields: CompletionFields) -> dict[str, Any]:
    """The ``/api/generate`` body for a checked ``/v1/completions`` request."""
    body = {**_base(fields), "prompt": fields.prompt}
    if fields.suffix:
        body["suffix"] = fields.suffix
    return body


def embedding_body(fields: EmbeddingFields) -> dict[str, Any]:
    """The ``/api/embed`` body for a checked ``/v1/embeddings`` request."""
    body = _base(fields)
    text = fields.input
    if not (isinstance(text, str) and text) and not (
            isinstance(text, list) and text and all(isinstance(t, str) for t in text)):
        raise InvalidRequest("invalid input: expected a non-empty string or list of strings")
    if fields.encoding_format not in (None, "", "float", "base64"):
        raise InvalidRequest(f"invalid encoding format: {fields.encoding_format!r} "
                             "(supported formats are 'float' and 'base64')")
    body["input"] = text
    if fields.dimensions:
        body["dimensions"] = fields.dimensions
    return body


# -- responses ---------------------------------------------------------------------------------


def usage(final: Chunk | None) -> dict[str, int]:
    prompt = int((final or {}).get("prompt_eval_count") or 0)
    completion = int((final or {}).get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def finish_reason(final: Chunk | None, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if (final or {}).get("done_reason") == "length" else "stop"


def tool_calls_out(calls: Iterable[Any], first_index: int = 0) -> list[dict[str, Any]]:
    """Ollama tool calls (arguments an object) as OpenAI's (arguments a JSON string, an id)."""
    out = []
    for offset, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        call_id = call.get("id") or "call_" + "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        out.append({"id": call_id, "index": first_index + offset, "type": "function",
                    "function": {"name": function.get("name", ""), "arguments": arguments}})
    return out


def _text(chunk: Chunk, kind: Kind) -> tuple[str, str, list[Any]]:
    """Content, thinking and tool calls of one Ollama chunk."""
    if kind == "chat":
        message = chunk.get("message") or {}
        return (message.get("content") or "", message.get("thinking") or "",
                list(message.get("tool_calls") or ()))
    return chunk.get("response") or "", chunk.get("thinking") or "", []


def chat_response(chunks: Sequence[Chunk], *, id: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` from every chunk of a chat (streamed or not)."""
    parts = [_text(chunk, "chat") for chunk in chunks]
    calls = [call for _, _, tools in parts for call in tools]
    logprobs = [entry for chunk in chunks for entry in chunk.get("logprobs") or ()]
    final = chunks[-1] if chunks else None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(p[0] for p in parts)}
    if any(p[1] for p in parts):
        message["reasoning"] = "".join(p[1] for p in parts)
    if calls:
        message["tool_calls"] = tool_calls_out(calls)
    choice: dict[str, Any] = {"index": 0, "message": message,
                              "finish_reason": finish_reason(final, bool(calls))}
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    return {"id": id, "object": "chat.completion", "created": int(time.time()),
            "model": _model(final, model), "system_fingerprint": FINGERPRINT,
            "choices": [choice], "usage": usage(final)}


def completion_response(chunks: Sequence[Chunk], *, id: str, model: str) -> dict[str, Any]:
    """A ``text_completion`` from every chunk of a generate request."""
    final = chunks[-1] if chunks else None
    text = "".join(_text(chunk, "completion")[0] for chunk in chunks)
    return {"id": id, "object": "text_completion", "created": int(time.time()),
            "model": _model(final, model), "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": None,
                         "finish_reason": finish_reason(final, False)}],
            "usage": usage(final)}


def embedding_response(chunks: Sequence[Chunk], *, model: str,
                       encoding_format: str | None) -> dict[str, Any]:
    """OpenAI's embedding list; ``base64`` packs each vector as little-endian float32."""
    vectors = [v for chunk in chunks for v in chunk.get("embeddings") or ()]
    tokens = sum(int(chunk.get("prompt_eval_count") or 0) for chunk in chunks)
    data = [{"object": "embedding", "index": i,
             "embedding": _base64(v) if encoding_format == "base64" else v}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _model(final: Chunk | None, model: str) -> str:
    name = (final or {}).get("model")
    return name if isinstance(name, str) and name else model


@define
class StreamConverter:
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
        self.model = _model(chunk, self.model)
        text, thinking, calls = _text(chunk, self.kind)
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
                delta["tool_calls"] = tool_calls_out(calls, self._tool_calls)
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
        reason = finish_reason(final, self._tool_calls > 0)
        events = [self._event([{"index": 0, **empty, "finish_reason": reason}])]
        if self.include_usage:
            events.append({**self._event([]), "usage": usage(final)})
        return events

    def _event(self, choices: list[dict[str, Any]]) -> Event:
        return {"id": self.id,
                "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT, "choices": choices}

