"""What the Ollama and OpenAI front-ends share: body parsing, priority, routing headers, and the
mapping from core errors to an HTTP status.

Each API renders :class:`ApiError` in its own error shape; this module never picks a shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web
from attrs import frozen

from sollol_core import convert
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


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type says (as Ollama does)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[ROUTER].settings.gateway.max_body_bytes
        raise ApiError(413, f"request body is larger than the limit of {limit} bytes") from None
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {exc}") from None
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
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 10:
        raise ApiError(400, f"priority must be an integer from 1 to 10, got {raw!r}")
    return raw


def routing_headers(reply: Reply) -> dict[str, str]:
    routing = reply.routing()
    return {
        "X-Sollol-Backend": reply.decision.backend,
        "X-Sollol-Reason": _header_safe(routing.reason),
        "X-Sollol-Request-Id": reply.request.id,
        "X-Sollol-Attempts": str(routing.attempts),
        "X-Sollol-Queue-Ms": f"{routing.queue_ms:.1f}",
    }


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")[:500]


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
            return ApiError(exc.status, str(exc), headers)  # the node's own verdict on the request
        return ApiError(502, str(exc), headers)
    if isinstance(exc, TimeoutError):
        return ApiError(504, "the request timed out", headers)
    return ApiError(500, f"internal error: {exc!r}", headers)
