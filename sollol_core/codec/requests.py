"""Request bodies, Ollama's and OpenAI's, both ways: sampling options, output format, reasoning,
and whole chat, completion and embedding requests.

``encode_*`` turns an Ollama body into the OpenAI request that asks the same (what a backend
speaking OpenAI gets); ``decode_*`` turns a client's OpenAI request into the Ollama body (what
the gateway routes), checking it like Ollama's own OpenAI layer (:class:`InvalidRequest`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sollol_core.codec.base import InvalidRequest
from sollol_core.codec.messages import decode_messages, encode_messages

#: Ollama option -> OpenAI request field, for the fields OpenAI defines. Decoding also takes
#: ``max_completion_tokens`` (before ``max_tokens``) for ``num_predict``.
OPTIONS = {
    "stop": "stop", "num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p",
    "seed": "seed", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
#: Samplers beyond OpenAI's that llama-server takes under their Ollama names.
EXTRA_OPTIONS = ("top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n")
#: OpenAI's defaults where they differ from Ollama's; a decoded request states them.
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
#: ``reasoning_effort`` values; ``none`` is Ollama's ``think: false``.
REASONING_EFFORTS = ("high", "medium", "low", "none")

_FIELDS = {**OPTIONS, **{name: name for name in EXTRA_OPTIONS}}


# -- parts -------------------------------------------------------------------------------------


def encode_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI fields for Ollama's ``options`` (options OpenAI has no field for are left)."""
    return {_FIELDS[option]: value for option, value in options.items()
            if option in _FIELDS and value is not None}


def decode_options(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's ``options`` for an OpenAI request's sampling fields (a single ``stop`` string
    becomes a list; temperature and top_p default to 1)."""
    found: dict[str, Any] = {}
    for option, name in _FIELDS.items():
        value = fields.get(name)
        if option == "num_predict" and fields.get("max_completion_tokens") is not None:
            value = fields["max_completion_tokens"]
        elif option == "stop" and value is not None:
            value = _stops(value)
        if value is None:
            value = OPENAI_DEFAULTS.get(option)
        if value is not None:
            found[option] = value
    return found


def _stops(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest(f"invalid type for 'stop' field: {stop!r}")
    return stops


def encode_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` for Ollama's ``format`` (``"json"`` or a JSON schema)."""
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, Mapping):
        return {"type": "json_schema", "json_schema": {"schema": dict(fmt)}}
    return None


def decode_format(response_format: Mapping[str, Any] | None) -> Any:
    """Ollama's ``format`` for OpenAI's ``response_format`` (None: free text)."""
    if not response_format:
        return None
    kind = str(response_format.get("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    schema = (response_format.get("json_schema") or {}).get("schema")
    if kind != "json_schema" or schema is None:
        return None
    if not isinstance(schema, dict):
        raise InvalidRequest("invalid field 'response_format.json_schema.schema': "
                             f"expected an object, got {schema!r}")
    return schema


def encode_think(think: Any) -> str | None:
    """OpenAI's ``reasoning_effort`` for Ollama's ``think`` (``true`` counts as medium, Ollama's
    ``max`` as high)."""
    if think is None:
        return None
    if isinstance(think, bool):
        return "medium" if think else "none"
    return think if think in REASONING_EFFORTS else "high"


def decode_think(effort: str | None) -> bool | str | None:
    """Ollama's ``think`` for OpenAI's ``reasoning_effort`` (None: not asked)."""
    if not effort:
        return None
    if effort not in REASONING_EFFORTS:
        raise InvalidRequest(f"invalid reasoning value: '{effort}' "
                             '(must be "high", "medium", "low", or "none")')
    return False if effort == "none" else effort


# -- whole requests ----------------------------------------------------------------------------


def _encode_base(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"model": body.get("model", ""), "stream": body.get("stream", True)}
    out.update(encode_options(body.get("options") or {}))
    response_format = encode_format(body.get("format"))
    if response_format is not None:
        out["response_format"] = response_format
    return out


def _decode_base(fields: Mapping[str, Any], *, sampling: bool = True) -> dict[str, Any]:
    if not fields.get("model"):
        raise InvalidRequest("model is required")
    if not sampling:
        return {"model": fields["model"]}
    return {"model": fields["model"], "stream": bool(fields.get("stream")),
            "options": decode_options(fields)}


def encode_chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/v1/chat/completions`` request for an ``/api/chat`` body."""
    out = _encode_base(body)
    out["messages"] = encode_messages(body.get("messages") or ())
    if body.get("tools"):
        out["tools"] = list(body["tools"])
    effort = encode_think(body.get("think"))
    if effort is not None:
        out["reasoning_effort"] = effort
    for key in ("logprobs", "top_logprobs"):
        if body.get(key) is not None:
            out[key] = body[key]
    return out


def decode_chat_request(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/api/chat`` body for a ``/v1/chat/completions`` request."""
    body = _decode_base(fields)
    messages = fields.get("messages")
    if not messages or not isinstance(messages, list):
        raise InvalidRequest("[] is too short - 'messages'")
    body["messages"] = decode_messages(messages)
    fmt = decode_format(fields.get("response_format"))
    if fmt is not None:
        body["format"] = fmt
    tools = fields.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
            raise InvalidRequest("invalid field 'tools': expected a list of objects")
        body["tools"] = tools
    reasoning = fields.get("reasoning")
    think = decode_think(reasoning.get("effort") if isinstance(reasoning, Mapping)
                         else fields.get("reasoning_effort"))
    if think is not None:
        body["think"] = think
    for key in ("logprobs", "top_logprobs"):
        if fields.get(key) is not None:
            body[key] = fields[key]
    return body


def encode_completion_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/v1/completions`` request for an ``/api/generate`` body (the prompt as it is)."""
    out = _encode_base(body)
    out["prompt"] = body.get("prompt") or ""
    if body.get("suffix"):
        out["suffix"] = body["suffix"]
    return out


def decode_completion_request(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/api/generate`` body for a ``/v1/completions`` request."""
    body = {**_decode_base(fields), "prompt": fields.get("prompt") or ""}
    if fields.get("suffix"):
        body["suffix"] = fields["suffix"]
    fmt = decode_format(fields.get("response_format"))
    if fmt is not None:
        body["format"] = fmt
    return body


def encode_embed_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/v1/embeddings`` request for an ``/api/embed`` body."""
    out = {"model": body.get("model", ""), "input": body.get("input") or ""}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    return out


def decode_embed_request(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/api/embed`` body for a ``/v1/embeddings`` request."""
    body = _decode_base(fields, sampling=False)
    text = fields.get("input")
    if not (isinstance(text, str) and text) and not (
            isinstance(text, list) and text and all(isinstance(t, str) for t in text)):
        raise InvalidRequest("invalid input: expected a non-empty string or list of strings")
    if fields.get("encoding_format") not in (None, "", "float", "base64"):
        raise InvalidRequest(f"invalid encoding format: {fields['encoding_format']!r} "
                             "(supported formats are 'float' and 'base64')")
    body["input"] = text
    if fields.get("dimensions"):
        body["dimensions"] = fields["dimensions"]
    return body
