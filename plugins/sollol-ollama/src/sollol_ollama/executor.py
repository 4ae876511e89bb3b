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
from sollol_core.wirejson import dumps, loads

#: Statuses worth another node: busy, missing model (inventory changed), server-side failure.
RETRYABLE = frozenset({404, 408, 429, 499}) | frozenset(range(500, 600))


#: The longest NDJSON line taken from a node (Ollama's are a few hundred bytes; an embedding of
#: a long input can be megabytes, but it is not streamed).
MAX_LINE_BYTES = 16 * 2**20

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
        headers = {**request.upstream_headers, "Content-Type": "application/json"}
        async with session.post(url, data=dumps(body), headers=headers) as response:
            if response.status != 200:
                message = _error_message(await response.read(), response.status)
                if response.status == 404:
                    on_missing_model(target)
                raise BackendError(f"{name}: {message}", status=response.status,
                                   retryable=response.status in RETRYABLE, detail=message)
            if not streamed:
                yield loads(await response.read())
                return
            # Lines are cut from whatever the socket gave at once (several chunks, often),
            # here rather than by a line reader per chunk: the cheapest way through per token.
            partial: list[bytes] = []
            held = 0
            async for block in response.content.iter_any():
                if b"\n" not in block:
                    partial.append(block)
                    held += len(block)
                    if held > MAX_LINE_BYTES:
                        raise BackendError(f"{name}: a line longer than {MAX_LINE_BYTES} bytes",
                                           retryable=sent == 0)
                    continue
                if partial:
                    partial.append(block)
                    block = b"".join(partial)
                    partial.clear()
                *lines, rest = block.split(b"\n")
                if rest:
                    partial.append(rest)
                held = len(rest)
                for line in lines:
                    if line and not line.isspace():
                        chunk = _chunk(line, name, sent == 0)
                        sent += 1
                        yield chunk
            last = b"".join(partial)
            if last and not last.isspace():  # a last line with no newline after it
                chunk = _chunk(last, name, sent == 0)
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


def _chunk(line: bytes, name: str, first: bool) -> Chunk:
    """One NDJSON line of the node's answer; Ollama's ``{"error": ...}`` line raises."""
    chunk: Chunk = loads(line)
    if isinstance(chunk, dict) and "error" in chunk and "done" not in chunk:
        raise BackendError(f"{name}: {chunk['error']}", retryable=first)
    return chunk


def _error_message(raw: bytes, status: int) -> str:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = raw.decode(errors="replace").strip()
    return text or f"HTTP {status}"
