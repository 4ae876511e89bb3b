"""Talking to a llama-server (a whole-model node or a coordinator SOLLOL started): run a request
through its OpenAI endpoints, and probe it via ``/health``, ``/props``, ``/slots``,
``/v1/models``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from sollol_core.errors import BackendError
from sollol_core.hookspecs import Chunk
from sollol_core.types import Endpoint, Health, InferenceRequest, ModelInfo, NodeSnapshot, Role
from sollol_core.wirejson import loads
from sollol_llamacpp.bridge import StreamTranslator, from_openai, to_openai

RETRYABLE = frozenset({408, 429, 503}) | frozenset(range(500, 600))


async def run(session: aiohttp.ClientSession, base_url: str, request: InferenceRequest,
              label: str) -> AsyncIterator[Chunk]:
    """Chunks in Ollama's shape; BackendError before the first one lets the router fail over."""
    path, body = to_openai(request)
    started = time.monotonic()
    sent = 0
    try:
        async with _post(session, f"{base_url}{path}", body,
                         request.upstream_headers or None) as response:
            if response.status != 200:
                text = _error_text(await response.read(), response.status)
                raise BackendError(f"{label}: {text}", status=response.status,
                                   retryable=response.status in RETRYABLE, detail=text)
            if not body.get("stream"):  # embeddings come whole
                yield from_openai(request, await response.json(content_type=None), started)
                return
            translator = StreamTranslator(request, started)
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = loads(data)
                if "error" in event:
                    raise BackendError(f"{label}: {_message(event['error'])}", retryable=sent == 0)
                for chunk in translator.feed(event):
                    sent += 1
                    yield chunk
            yield translator.close()
    except aiohttp.ClientConnectorError as exc:
        raise BackendError(f"{label}: unreachable ({exc.os_error.strerror or exc})") from None
    except aiohttp.ClientError as exc:
        raise BackendError(f"{label}: {type(exc).__name__}: {exc}", retryable=sent == 0) from None


@contextlib.asynccontextmanager
async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                headers: Mapping[str, str] | None) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST, once more on a new connection when the connection closed before any answer:
    llama-server (b11434) answers a streamed request with ``Keep-Alive: timeout=5`` and then
    closes the connection, so the next request on it fails ("Can not write request body" or
    "Server disconnected") without reaching the server; a generation has no side effect."""
    try:
        response = await session.post(url, json=body, headers=headers)
    except aiohttp.ServerDisconnectedError:
        response = await session.post(url, json=body, headers=headers)
    except aiohttp.ClientOSError as exc:
        if not isinstance(exc.__cause__, ConnectionResetError | BrokenPipeError):
            raise
        response = await session.post(url, json=body, headers=headers)
    async with response:
        yield response


def _message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _error_text(raw: bytes, status: int) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or f"HTTP {status}"
    if isinstance(body, dict) and "error" in body:
        return _message(body["error"])
    return f"HTTP {status}"


async def _get_json(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, None


async def probe_server(session: aiohttp.ClientSession, endpoint: Endpoint,
                       timeout_s: float) -> NodeSnapshot:
    """A whole-model llama-server node: health, its model, slots in use."""
    base = f"http://{endpoint.address}"
    started = time.monotonic()
    try:
        status, _health = await _get_json(session, f"{base}/health", timeout_s)
        latency = (time.monotonic() - started) * 1000
        if status == 503:
            return NodeSnapshot.down(endpoint, "loading its model")
        if status != 200:
            return NodeSnapshot.down(endpoint, f"not a llama-server: /health answered {status}")
        (_, props), (_, models), (_, slots) = await asyncio.gather(
            _get_json(session, f"{base}/props", timeout_s),
            _get_json(session, f"{base}/v1/models", timeout_s),
            _get_json(session, f"{base}/slots", timeout_s))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError)
                  else f"unreachable: {exc}")
        return NodeSnapshot.down(endpoint, reason)
    props = props if isinstance(props, dict) else {}
    names = [m.get("id", "") for m in (models or {}).get("data", []) if isinstance(m, dict)]
    if not names and props.get("model_path"):
        names = [Path(str(props["model_path"])).name]
    said = props.get("total_slots")
    parallel = int(said or 1)
    busy = sum(1 for s in slots if s.get("is_processing")) if isinstance(slots, list) else 0
    return NodeSnapshot(
        endpoint=endpoint, health=Health.UP, taken_at=time.time(), role=Role.NODE,
        latency_ms=round(latency, 3), version=str(props.get("build_info", "llama-server")),
        detail=f"{busy}/{parallel} slots busy",
        models=tuple(ModelInfo(name=n, loaded=True) for n in names if n),
        in_flight=busy, parallel=parallel, slots_source="node" if said else "setting")
