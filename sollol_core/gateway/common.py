"""What the Ollama and OpenAI front-ends share: body parsing, priority, routing headers, and the
mapping from core errors to an HTTP status.

Each API renders :class:`ApiError` in its own error shape; this module never picks a shape.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web
from attrs import frozen

from sollol_core import convert, wirejson
from sollol_core.errors import BackendError, NoRouteError, QueueFullError
from sollol_core.router import Reply, Router
from sollol_core.types import InferenceRequest

T = TypeVar("T")

PRIORITY_HEADER = "X-Sollol-Priority"
ROUTER = web.AppKey("router", Router)


@frozen
class ApiError(Exception):
    """An error to send to the client: status, message, extra headers."""

    status: int
    message: str
    headers: Mapping[str, str] = {}
    #: OpenAI's error ``type``; derived from the status when empty.
    kind: str = ""


#: OpenAI's error ``type`` for a status: Ollama's OpenAI layer says ``invalid_request_error``
#: for 400 and ``not_found_error`` for 404; the statuses only SOLLOL answers get OpenAI's own.
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                      403: "permission_error", 404: "not_found_error",
                      405: "invalid_request_error", 408: "invalid_request_error",
                      413: "invalid_request_error", 415: "invalid_request_error"}


def openai_error_body(status: int, message: str, *, kind: str = "",
                      code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object; ``type`` follows the status unless ``kind`` says."""
    return {"error": {"message": message,
                      "type": kind or OPENAI_ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": code}}


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (as Ollama does; browsers are
    held to JSON by the gateway's middleware). Bounded in size, in time and in the number of
    values, so that neither a slow client nor a huge array can stall the gateway."""
    gateway = request.app[ROUTER].settings.gateway
    try:
        async with asyncio.timeout(gateway.body_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body is larger than the limit of "
                            f"{gateway.max_body_bytes} bytes") from None
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within "
                            f"{gateway.body_timeout_s:g} s") from None
    if not raw.strip():
        raise ApiError(400, "missing request body")
    # Every JSON value past an array's or object's first one follows a comma: counting them in C
    # bounds what json.loads and the field checks will cost before either runs.
    if raw.count(b",") >= gateway.max_json_items:
        raise ApiError(413, f"request body has more than {gateway.max_json_items} JSON values "
                            "(gateway.max_json_items)")
    try:
        body = wirejson.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"expected a JSON object, got {type(body).__name__}")
    return body


def check_fields(body: Mapping[str, Any], shape: type[T]) -> T:
    """Check the types of the fields ``shape`` knows (unknown keys are the backend's business)."""
    try:
        return convert.structure_lenient(body, shape)
    except Exception as exc:
        key, message = (convert.error_lines(exc) or [("body", str(exc))])[0]
        raise ApiError(400, f"invalid field '{key}': {message}") from None


def priority_of(request: web.Request, body: Mapping[str, Any], default: int = 5) -> int:
    """``X-Sollol-Priority`` header, else the body's ``priority`` field, else ``default``."""
    raw: Any = request.headers.get(PRIORITY_HEADER, body.get("priority", default))
    if isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 10:
        raise ApiError(400, f"priority must be an integer from 1 to 10, got {_shown(raw)}")
    return raw


#: ASCII digits only: ``str.isdigit`` also takes "²" and other digits ``int`` refuses.
_INTEGER = re.compile(r"[+-]?[0-9]{1,3}", re.ASCII)


def _shown(value: Any) -> str:
    """A client's value, short, for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."


def routing_headers(reply: Reply) -> dict[str, str]:
    routing = reply.routing()
    return {
        "X-Sollol-Backend": _header_safe(reply.decision.backend),
        "X-Sollol-Reason": _header_safe(routing.reason),
        "X-Sollol-Request-Id": reply.request.id,
        "X-Sollol-Attempts": str(routing.attempts),
        "X-Sollol-Queue-Ms": f"{routing.queue_ms:.1f}",
    }


def _header_safe(text: str) -> str:
    """Text (often holding what a client sent: a model name) fit for a header value: printable
    ASCII only, so no client can break or split a response header."""
    return _UNSAFE.sub("?", text[:500])


_UNSAFE = re.compile(r"[^\x20-\x7e]")


def error_for(exc: Exception, request: InferenceRequest, router: Router) -> ApiError:
    """Turn a routing or backend failure into a status and message a client understands."""
    headers = {"X-Sollol-Request-Id": request.id}
    if isinstance(exc, QueueFullError):
        return ApiError(503, "server busy, please try again.  maximum pending requests exceeded",
                        {**headers, "Retry-After": str(exc.retry_after_s),
                         "X-Sollol-Reason": _header_safe(str(exc))})
    if isinstance(exc, NoRouteError):
        headers["X-Sollol-Reason"] = _header_safe(str(exc))
        known = any(n.holds(request.model) for n in router.fleet.snapshot().nodes)
        if known:  # it exists, but nowhere healthy right now
            return ApiError(503, str(exc), {**headers, "Retry-After": "5"})
        return ApiError(404, f"model '{request.model}' not found", headers)
    if isinstance(exc, BackendError):
        if exc.status is not None and 400 <= exc.status < 500:
            # the node's own verdict on the request, in its own words
            return ApiError(exc.status, exc.detail or str(exc), headers)
        return ApiError(502, str(exc), headers)
    if isinstance(exc, TimeoutError):
        return ApiError(504, str(exc) or "the request timed out", headers)
    return ApiError(500, f"internal error: {exc!r}", headers)
