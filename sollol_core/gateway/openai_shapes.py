"""The gateway's side of OpenAI requests: the typed fields it reads, and the Ollama bodies they
become. The mapping itself, both ways, is :mod:`sollol_core.codec`.

Requests are checked in two steps: the attrs classes give the types of the fields we read (for
``check_fields``; unknown keys are ignored), then ``*_body`` has the codec check the rest and
return the body in Ollama's field names.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs
from attrs import field, frozen

from sollol_core import codec, convert
from sollol_core.codec import InvalidRequest

# The replies, under the names the gateway's callers know them by.
from sollol_core.codec import StreamEncoder as StreamConverter
from sollol_core.codec import encode_chat_reply as chat_response
from sollol_core.codec import encode_completion_reply as completion_response
from sollol_core.codec import encode_embed_reply as embedding_response

__all__ = [
    "ChatFields", "CompletionFields", "EmbeddingFields", "InvalidRequest", "JsonSchemaFormat",
    "Reasoning", "ResponseFormat", "Sampling", "StreamConverter", "StreamOptions", "chat_body",
    "chat_response", "completion_body", "completion_response", "embedding_body",
    "embedding_response", "plain",
]

C = TypeVar("C")


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


def plain(fields: Any) -> dict[str, Any]:
    """Checked fields as the JSON object the codec reads (nested objects too; values shared)."""
    out: dict[str, Any] = {}
    for attribute in attrs.fields(type(fields)):
        value = getattr(fields, attribute.name)
        out[attribute.name] = plain(value) if attrs.has(type(value)) else value
    return out


def chat_body(fields: ChatFields) -> dict[str, Any]:
    """The ``/api/chat`` body for a checked ``/v1/chat/completions`` request."""
    return codec.decode_chat_request(plain(fields))


def completion_body(fields: CompletionFields) -> dict[str, Any]:
    """The ``/api/generate`` body for a checked ``/v1/completions`` request."""
    return codec.decode_completion_request(plain(fields))


def embedding_body(fields: EmbeddingFields) -> dict[str, Any]:
    """The ``/api/embed`` body for a checked ``/v1/embeddings`` request."""
    return codec.decode_embed_request(plain(fields))
