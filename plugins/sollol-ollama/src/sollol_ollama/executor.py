"""Run a placed request on an Ollama node and relay its answer chunk by chunk.

Failures before the first chunk raise :class:`BackendError` so the router can try the next node;
the node's own 4xx verdict on the request (bad option, unsupported capability) is final. A failure
after the first chunk (Ollama's ``{"error": ...}`` line, a dropped connection) ends the stream with
an error the gateway turns into the API's error chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from sollol_core.errors import BackendError
from sollol_core.hookspecs import Chunk
from sollol_core.types import Endpoint, InferenceRequest, Operation

#: Statuses worth another node: busy, missing model (inventory changed), server-side failure.
RETRYABLE = frozenset({404, 408, 429, 499}) | frozenset(range(500, 600))


#: Operations whose answers Ollama can stream: always streamed from the node, so that a slow
#: but healthy generation shows it is alive token by token (the router folds them back into
#: one answer for a client that asked for one).
STREAMED = frozenset({Operation.CHAT, Operation.GENERATE})


async def execute(session: aiohttp.ClientSession, request: InferenceRequest, target: Endpoint,
                  on_missing_model: Callable[[Endpoint], None]) -> AsyncIterator[Chunk]:
    url = f"http://{target.address}/api/{request.operation.value}"
    name = target.address
    streamed = request.operation in STREAMED
    body = dict(request.body)
    if streamed:
        body["stream"] = True
    sent = 0
    try:
        async with session.post(url, json=body,
                                headers=request.upstream_headers or None) as response:
            if response.status != 200:
                message = _error_message(await response.read(), response.status)
                if response.status == 404:
                    on_missing_model(target)
                raise BackendError(f"{name}: {message}", status=response.status,
                                   retryable=response.status in RETRYABLE, detail=message)
            if not streamed:
                yield await response.json(content_type=None)
                return
            async for line in response.content:
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if isinstance(chunk, dict) and "error" in chunk and "done" not in chunk:
                    raise BackendError(f"{name}: {chunk['error']}", retryable=sent == 0)
                sent += 1
                yield chunk
            if sent == 0 or not chunk.get("done", False):
                raise BackendError(f"{name}: the stream ended before its last chunk",
                                   retryable=sent == 0)
    except aiohttp.ClientPayloadError as exc:
        raise BackendError(f"{name}: connection lost mid-answer ({exc})",
                           retryable=sent == 0) from None
    except aiohttp.ClientConnectorError as exc:
        raise BackendError(f"{name}: unreachable ({exc.os_error.strerror or exc})") from None
    except aiohttp.ClientError as exc:
        raise BackendError(f"{name}: {type(exc).__name__}: {exc}", retryable=sent == 0) from None
    except json.JSONDecodeError:
        raise BackendError(f"{name}: answered something that is not JSON",
                           retryable=sent == 0) from None


def _error_message(raw: bytes, status: int) -> str:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = raw.decode(errors="replace").strip()
    return text or f"HTTP {status}"
