"""Request decoding and validation with Ollama's statuses and messages."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

FOREVER = math.inf
DEFAULT_KEEP_ALIVE = 300.0
FailureKind = Literal["refuse", "error500", "hang", "die_midstream", "error_midstream",
                      "stall_midstream"]
FAILURE_KINDS: tuple[FailureKind, ...] = (
    "refuse", "error500", "hang", "die_midstream", "error_midstream", "stall_midstream")
FAILURE_MESSAGE = "emulated failure"
BUSY = "server busy, please try again.  maximum pending requests exceeded"


class ApiError(Exception):
    """An error reply: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def drop_connection(request: web.BaseRequest, *, abort: bool = False) -> None:
    """Close the request's connection without (any more of) a response."""
    transport = request.transport
    if transport is not None:
        if abort:
            transport.abort()
        else:
            transport.close()


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_reply(obj: Any, status: int = 200) -> web.Response:
    """A compact JSON reply, ``application/json; charset=utf-8`` like Ollama's."""
    return web.json_response(obj, status=status, dumps=_compact)


def error_response(status: int, message: str) -> web.Response:
    return json_reply({"error": message}, status)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_obj(value: Any) -> bool:
    return isinstance(value, dict)


def _anything(value: Any) -> bool:
    return True


Spec = dict[str, tuple[str, Callable[[Any], bool]]]
_STR = ("string", _is_str)
_BOOL = ("bool", _is_bool)
_INT = ("int", _is_int)
_OPTIONS = ("map[string]interface {}", _is_obj)
_THINK = ("api.ThinkValue", lambda v: isinstance(v, bool | str))

SPECS: dict[str, tuple[str, Spec]] = {
    "/api/generate": ("GenerateRequest", {
        "model": _STR, "prompt": _STR, "suffix": _STR, "system": _STR, "template": _STR,
        "context": ("[]int", _list_of(_is_int)), "stream": _BOOL, "raw": _BOOL,
        "images": ("[]api.ImageData", _list_of(_is_str)), "options": _OPTIONS, "think": _THINK,
        "truncate": _BOOL, "shift": _BOOL, "logprobs": _BOOL, "top_logprobs": _INT,
        "format": ("json.RawMessage", _anything),
    }),
    "/api/chat": ("ChatRequest", {
        "model": _STR, "messages": ("[]api.Message", _list_of(_is_obj)), "stream": _BOOL,
        "tools": ("api.Tools", _list_of(_is_obj)), "options": _OPTIONS, "think": _THINK,
        "truncate": _BOOL, "shift": _BOOL, "logprobs": _BOOL, "top_logprobs": _INT,
        "format": ("json.RawMessage", _anything),
    }),
    "/api/embed": ("EmbedRequest", {
        "model": _STR, "truncate": _BOOL, "dimensions": _INT, "options": _OPTIONS,
    }),
    "/api/embeddings": ("EmbeddingRequest", {"model": _STR, "prompt": _STR, "options": _OPTIONS}),
    "/api/show": ("ShowRequest", {
        "model": _STR, "name": _STR, "system": _STR, "template": _STR, "verbose": _BOOL,
        "options": _OPTIONS,
    }),
}

_MESSAGE: Spec = {"role": _STR, "content": _STR, "thinking": _STR, "tool_name": _STR,
                  "images": ("[]api.ImageData", _list_of(_is_str)),
                  "tool_calls": ("[]api.ToolCall", _list_of(_is_obj))}


_GO_CONTEXT = {
    "Expecting property name enclosed in double quotes":
        "looking for beginning of object key string",
    "Expecting ',' delimiter": "after object key:value pair",
    "Expecting ':' delimiter": "after object key",
    "Extra data": "after top-level value",
}


def _reject_constant(token: str) -> Any:
    raise ValueError(f"invalid character '{token[0]}' looking for beginning of value")


def decode_body(raw: bytes, path: str) -> dict[str, Any]:
    """Decode and type-check a request body the way Ollama's Go decoder would."""
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise ApiError(400, "missing request body")
    struct, spec = SPECS[path]
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise ApiError(400, "unexpected EOF") from None
        where = _GO_CONTEXT.get(exc.msg, "looking for beginning of value")
        raise ApiError(400, f"invalid character {text[exc.pos]!r} {where}") from None
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if body is None:  # Go decodes null into a struct as a no-op
        body = {}
    if not isinstance(body, dict):
        kind = _json_type(body)
        raise ApiError(400, f"json: cannot unmarshal {kind} into Go value of type api.{struct}")
    _check_fields(body, spec, struct)
    for message in body.get("messages") or ():
        _check_fields(message, _MESSAGE, "Message.messages")
    if "keep_alive" in body and body["keep_alive"] is not None:
        keep_alive_seconds(body["keep_alive"], struct)
    return body


def _check_fields(body: dict[str, Any], spec: Spec, struct: str) -> None:
    for field, (go_type, check) in spec.items():
        value = body.get(field)
        if value is not None and not check(value):
            kind = _json_type(value)
            if kind == "number":
                kind = f"number {json.dumps(value)}"
            raise ApiError(400, f"json: cannot unmarshal {kind} into Go struct field "
                                f"{struct}.{field} of type {go_type}")


_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: Any, struct: str = "GenerateRequest") -> float:
    """Seconds for a ``keep_alive`` value (number of seconds or Go duration); negative = forever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if body == "0":
            seconds = 0.0
        elif body and "".join(m.group(0) for m in _DURATION.finditer(body)) == body:
            seconds = sign * sum(float(m.group(1)) * _UNITS[m.group(2)]
                                 for m in _DURATION.finditer(body))
        else:
            raise ApiError(400, f"time: invalid duration {json.dumps(value)}")
    else:
        raise ApiError(400, f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                            f"{struct}.keep_alive of type api.Duration")
    return FOREVER if seconds < 0 else seconds


_INT_OPTIONS = {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx",
                "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict"}
_FLOAT_OPTIONS = {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty",
                  "presence_penalty", "frequency_penalty"}
_BOOL_OPTIONS = {"use_mmap", "numa", "low_vram", "penalize_newline"}


def check_options(options: dict[str, Any]) -> None:
    """Known options of the wrong type fail at scheduling time: 500, as in Ollama."""
    for key, value in options.items():
        if value is None:
            continue
        if key in _INT_OPTIONS and not _is_number(value):
            raise ApiError(500, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and not _is_number(value):
            raise ApiError(500, f'option "{key}" must be of type float')
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise ApiError(500, f'option "{key}" must be of type boolean')
        if key == "stop" and not _list_of(_is_str)(value):
            raise ApiError(500, f'option "{key}" must be of type array of strings')


def int_option(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def ndjson(obj: dict[str, Any]) -> bytes:
    return (_compact(obj) + "\n").encode()
