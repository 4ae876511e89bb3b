"""Chat messages and tool calls, Ollama's and OpenAI's, both ways.

=================================  ==============================================================
Ollama                             OpenAI
=================================  ==============================================================
``content`` + ``images`` (base64)  ``content``: a string, or ``text`` and ``image_url`` parts
``thinking``                       ``reasoning_content`` (``reasoning`` is read too)
``tool_calls``, arguments object   ``tool_calls``, arguments a JSON string
``tool_name``                      ``name`` (else the name of the call ``tool_call_id`` answers)
``tool_call_id``                   ``tool_call_id``
=================================  ==============================================================

Decoding an OpenAI request is strict (:class:`InvalidRequest`) and follows Ollama's own OpenAI
layer: an array content gives one message per part, and what belongs to the whole message goes
on its last part. Encoding is lenient: it reads our own, already checked, data.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sollol_core.codec.base import InvalidRequest, dumps

#: The data-URL prefixes an image part may have (Ollama's list); images leave with ``DATA_URL``.
IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png",
                                                                            "webp")))
DATA_URL = "data:image/png;base64,"

_ID_ALPHABET = string.ascii_lowercase + string.digits


# -- messages ----------------------------------------------------------------------------------


def encode_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI's (a message with images gets content parts)."""
    return [encode_message(message) for message in messages]


def encode_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.get("role", "user")}
    content = message.get("content", "")
    images = message.get("images")
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
        parts += [{"type": "image_url", "image_url": {"url": DATA_URL + image}}
                  for image in images]
        out["content"] = parts
    else:
        out["content"] = content
    if message.get("thinking"):
        out["reasoning_content"] = message["thinking"]
    if message.get("tool_calls"):
        out["tool_calls"] = encode_tool_calls(message["tool_calls"])
    if message.get("tool_name"):
        out["name"] = message["tool_name"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def decode_messages(raw: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as Ollama's, checked."""
    names: dict[str, str] = {}  # tool call id -> function, for tool results that omit the name
    return [m for index, message in enumerate(raw) for m in _decode(index, message, names)]


def _decode(index: int, raw: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    """One OpenAI message as Ollama messages (an array content gives one message per part)."""
    where = f"messages[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        raise InvalidRequest(f"invalid message format: {where} needs a string 'role'")
    role: str = raw["role"]
    reasoning = raw.get("reasoning") or raw.get("reasoning_content") or ""
    calls = decode_tool_calls(raw.get("tool_calls"), where)
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


# -- tool calls --------------------------------------------------------------------------------
# In a request's history a call without an id gets ``call_<n>``, the same every time (the prompt,
# and a server's prompt cache, stay the same); in a reply it gets a fresh ``call_`` + 8 random
# characters, as Ollama's, and its index (streams need it).


def encode_tool_calls(calls: Iterable[Any]) -> list[dict[str, Any]]:
    """A request's Ollama tool calls (arguments an object) as OpenAI's (a JSON string)."""
    return [{"id": call.get("id") or f"call_{index}", "type": "function",
             "function": _encode_function(call)} for index, call in enumerate(calls)]


def encode_reply_tool_calls(calls: Iterable[Any], first_index: int = 0) -> list[dict[str, Any]]:
    """A reply's Ollama tool calls as OpenAI's, numbered from ``first_index``."""
    return [{"id": call.get("id") or _fresh_id(), "index": first_index + offset,
             "type": "function", "function": _encode_function(call)}
            for offset, call in enumerate(calls)]


def _encode_function(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments", {})
    return {"name": function.get("name", ""),
            "arguments": arguments if isinstance(arguments, str) else dumps(arguments)}


def _fresh_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def decode_tool_calls(raw: Any, where: str = "message") -> list[dict[str, Any]]:
    """A request's OpenAI tool calls as Ollama's, checked (arguments must be a JSON object)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest(f"invalid message format: {where}.tool_calls must be a list")
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"invalid message format: {where} has a malformed tool call")
        try:
            arguments = _arguments(function.get("arguments"))
        except ValueError:
            raise InvalidRequest("invalid tool call arguments") from None
        if not isinstance(arguments, dict):
            raise InvalidRequest("invalid tool call arguments")
        entry: dict[str, Any] = {"function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


def decode_reply_tool_calls(raw: Any) -> list[dict[str, Any]]:
    """A reply's OpenAI tool calls as Ollama's, as they come: each gets its index and an id, and
    arguments that are not JSON come back as ``{"raw": text}``."""
    out = []
    for index, call in enumerate(raw or ()):
        function = call.get("function") or {}
        try:
            arguments = _arguments(function.get("arguments"))
        except ValueError:
            arguments = {"raw": function.get("arguments")}
        out.append({"id": call.get("id") or f"call_{index}",
                    "function": {"index": index, "name": function.get("name") or "",
                                 "arguments": arguments}})
    return out


def _arguments(arguments: Any) -> Any:
    """Arguments as an object: a JSON string parsed (empty means ``{}``), anything else kept."""
    if not arguments:
        return {}
    return json.loads(arguments) if isinstance(arguments, str) else arguments
