"""OpenAI request and response shapes, converted to and from Ollama's: pure functions, no HTTP.

Requests are checked in two steps: the attrs classes below give the types of the fields we read
(``check_fields``; unknown keys are ignored), then ``*_body`` checks what types cannot say and
returns the body in Ollama's field names. Responses are built from Ollama-shaped chunks, either all
at once (``chat_response``...) or as they arrive (:class:`StreamConverter`). Where Ollama's own
OpenAI layer decides something (defaults, messages, finish reasons), we decide it the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

from attrs import define, field, frozen

from sollol_core import convert

Chunk = Mapping[str, Any]
Event = dict[str, Any]
Kind = Literal["chat", "completion"]
C = TypeVar("C")

FINGERPRINT = "fp_ollama"
IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in
                                     ("jpeg", "jpg", "png", "webp")))
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

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


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


def _need_model(model: str) -> None:
    if not model:
        raise InvalidRequest("model is required")


def options(fields: Sampling) -> dict[str, Any]:
    """Ollama's ``options`` for OpenAI's sampling fields (temperature and top_p default to 1)."""
    found: dict[str, Any] = {}
    if fields.stop is not None:
        stops = [fields.stop] if isinstance(fields.stop, str) else fields.stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest(f"invalid type for 'stop' field: {fields.stop!r}")
        found["stop"] = stops
    limit = fields.max_completion_tokens if fields.max_completion_tokens is not None \
        else fields.max_tokens
    if limit is not None:
        found["num_predict"] = limit
    found["temperature"] = 1.0 if fields.temperature is None else fields.temperature
    for name in ("seed", "frequency_penalty", "presence_penalty"):
        if getattr(fields, name) is not None:
            found[name] = getattr(fields, name)
    found["top_p"] = 1.0 if fields.top_p is None else fields.top_p
    return found


def chat_body(fields: ChatFields) -> dict[str, Any]:
    """The ``/api/chat`` body for a checked ``/v1/chat/completions`` request."""
    _need_model(fields.model)
    if not fields.messages:
        raise InvalidRequest("[] is too short - 'messages'")
    messages = [m for i, raw in enumerate(fields.messages)
                for m in _messages(i, raw, fields.messages)]
    body: dict[str, Any] = {"model": fields.model, "messages": messages,
                            "stream": fields.stream, "options": options(fields)}
    rf = fields.response_format
    if rf is not None and rf.type.strip().lower() == "json_object":
        body["format"] = "json"
    elif rf is not None and rf.type.strip().lower() == "json_schema" and rf.json_schema:
        schema = rf.json_schema.schema
        if schema is not None and not isinstance(schema, dict):
            raise InvalidRequest("invalid field 'response_format.json_schema.schema': "
                                 f"expected an object, got {schema!r}")
        if schema is not None:
            body["format"] = schema
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
    if fields.logprobs is not None:
        body["logprobs"] = fields.logprobs
    if fields.top_logprobs is not None:
        body["top_logprobs"] = fields.top_logprobs
    return body


def _messages(index: int, raw: Any, every: Sequence[Any]) -> list[dict[str, Any]]:
    """One OpenAI message as Ollama messages (an array content gives one message per part)."""
    where = f"messages[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        raise InvalidRequest(f"invalid message format: {where} needs a string 'role'")
    role: str = raw["role"]
    reasoning = raw.get("reasoning") or raw.get("reasoning_content") or ""
    calls = _tool_calls_in(raw.get("tool_calls"), where)
    tool_name = ""
    if role.lower() == "tool":
        tool_name = raw.get("name") or _tool_name(every, raw.get("tool_call_id"))
    content = raw.get("content")
    out: list[dict[str, Any]]
    if isinstance(content, str):
        out = [{"role": role, "content": content}]
    elif isinstance(content, list):
        out = [_part(role, part, where) for part in content]
    elif content is None and calls:
        out = [{"role": role, "content": ""}]
    else:
        raise InvalidRequest(f"invalid message content type: {type(content).__name__}")
    if out:
        last = out[-1]
        if calls:
            last["tool_calls"] = calls
        if tool_name:
            last["tool_name"] = tool_name
        if isinstance(raw.get("tool_call_id"), str):
            last["tool_call_id"] = raw["tool_call_id"]
        if isinstance(reasoning, str) and reasoning:
            last["thinking"] = reasoning
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
        data = url[len(prefix):]
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("invalid message format: the image is not base64") from None
        return {"role": role, "content": "", "images": [data]}
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


def _tool_name(messages: Sequence[Any], call_id: Any) -> str:
    """The function a tool result answers, found by its call id (the last match wins)."""
    for message in reversed(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and call.get("id") == call_id:
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                return name if isinstance(name, str) else ""
    return ""


def completion_body(fields: CompletionFields) -> dict[str, Any]:
    """The ``/api/generate`` body for a checked ``/v1/completions`` request."""
    _need_model(fields.model)
    body: dict[str, Any] = {"model": fields.model, "prompt": fields.prompt,
                            "stream": fields.stream, "options": options(fields)}
    if fields.suffix:
        body["suffix"] = fields.suffix
    return body


def embedding_body(fields: EmbeddingFields) -> dict[str, Any]:
    """The ``/api/embed`` body for a checked ``/v1/embeddings`` request."""
    _need_model(fields.model)
    text = fields.input
    if not (isinstance(text, str) and text) and not (
            isinstance(text, list) and text and all(isinstance(t, str) for t in text)):
        raise InvalidRequest("invalid input: expected a non-empty string or list of strings")
    if fields.encoding_format not in (None, "", "float", "base64"):
        raise InvalidRequest(f"invalid encoding format: {fields.encoding_format!r} "
                             "(supported formats are 'float' and 'base64')")
    body: dict[str, Any] = {"model": fields.model, "input": text}
    if fields.dimensions:
        body["dimensions"] = fields.dimensions
    return body


# -- responses ---------------------------------------------------------------------------------


def error_body(message: str, status: int, kind: str = "") -> dict[str, Any]:
    """OpenAI's error object; ``type`` follows the status as Ollama's does unless ``kind``."""
    kind = kind or {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def chunk_error(chunk: Chunk) -> str | None:
    """The message of an ``{"error": ...}`` chunk a backend relayed after its first chunk."""
    error = chunk.get("error")
    if error is None:
        return None
    return error if isinstance(error, str) else json.dumps(error)


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
        out.append({
            "id": call.get("id") or new_call_id(),
            "index": first_index + offset,
            "type": "function",
            "function": {"name": function.get("name", ""),
                         "arguments": arguments if isinstance(arguments, str) else
                         json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))},
        })
    return out


def new_call_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


def _text(chunk: Chunk, kind: Kind) -> tuple[str, str, list[Any]]:
    """Content, thinking and tool calls of one Ollama chunk."""
    if kind == "chat":
        message = chunk.get("message") or {}
        return (message.get("content") or "", message.get("thinking") or "",
                list(message.get("tool_calls") or ()))
    return chunk.get("response") or "", chunk.get("thinking") or "", []


def chat_response(chunks: Sequence[Chunk], *, id: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` from every chunk of a chat (streamed or not)."""
    content, thinking, calls = [], [], []
    logprobs: list[Any] = []
    for chunk in chunks:
        text, thought, tools = _text(chunk, "chat")
        content.append(text)
        thinking.append(thought)
        calls.extend(tools)
        logprobs.extend(chunk.get("logprobs") or ())
    final = chunks[-1] if chunks else None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if "".join(thinking):
        message["reasoning"] = "".join(thinking)
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
        reason = finish_reason(final, self._tool_calls > 0)
        if self.kind == "chat":
            events = [self._event([{"index": 0, "delta": {}, "finish_reason": reason}])]
        else:
            events = [self._event([{"text": "", "index": 0, "logprobs": None,
                                    "finish_reason": reason}])]
        if self.include_usage:
            events.append({**self._event([]), "usage": usage(final)})
        return events

    def _event(self, choices: list[dict[str, Any]]) -> Event:
        return {"id": self.id,
                "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT, "choices": choices}


# -- models ------------------------------------------------------------------------------------


def model_entry(name: str, modified_at: str) -> dict[str, Any]:
    """One ``/v1/models`` entry: ``owned_by`` is the name's namespace (``library`` by default)."""
    return {"id": name, "object": "model", "created": epoch(modified_at),
            "owned_by": namespace(name)}


def namespace(name: str) -> str:
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 and parts[-2] else "library"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def epoch(timestamp: str) -> int:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds allowed); 0 if unreadable."""
    text = _FRACTION.sub(r"\1", timestamp.strip()).replace("Z", "+00:00")
    try:
        return max(int(datetime.fromisoformat(text).timestamp()), 0)
    except ValueError:
        return 0
