"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``
and ``/v1/models``, as Ollama serves them.

Each request is checked (:mod:`sollol_core.gateway.openai_shapes`), decoded into an Ollama-shaped
:class:`InferenceRequest` and placed by the router; the Ollama chunks that come back are encoded
into OpenAI's shapes (both by :mod:`sollol_core.codec`). Streams are Server-Sent Events, written
chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from attrs import frozen

from sollol_core import codec
from sollol_core.errors import BackendError
from sollol_core.gateway import openai_shapes as shapes
from sollol_core.gateway.catalog import catalogue
from sollol_core.gateway.common import (
    ROUTER,
    ApiError,
    check_fields,
    error_for,
    openai_error_body,
    priority_of,
    read_json,
    routing_headers,
)
from sollol_core.hookspecs import Chunk
from sollol_core.router import Reply, Router
from sollol_core.types import InferenceRequest, model_key
from sollol_core.wirejson import dumps


def add_routes(app: web.Application) -> None:
    """Register ``/v1/*`` on ``app``."""
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model:.+}", _model)


@frozen
class _Call:
    """One parsed OpenAI request: the request to route and how to answer it."""

    request: InferenceRequest
    kind: Literal["chat", "completion", "embedding"]
    id: str = ""
    include_usage: bool = False
    encoding_format: str | None = None

    def answer(self, chunks: list[Chunk]) -> dict[str, Any]:
        model = self.request.model
        if self.kind == "chat":
            return codec.encode_chat_reply(chunks, id=self.id, model=model)
        if self.kind == "completion":
            return codec.encode_completion_reply(chunks, id=self.id, model=model)
        return codec.encode_embed_reply(chunks, model=model,
                                        encoding_format=self.encoding_format)


def _router(request: web.Request) -> Router:
    return request.app[ROUTER]


def _shaped(convert: Callable[[Any], dict[str, Any]], fields: Any) -> dict[str, Any]:
    try:
        return convert(fields)
    except codec.InvalidRequest as exc:
        raise ApiError(400, str(exc)) from None


def _rest(body: Mapping[str, Any], *taken: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in {"model", "stream", *taken}}


def _include_usage(fields: shapes.Sampling) -> bool:
    return fields.stream_options is not None and fields.stream_options.include_usage


def _parse_chat(request: web.Request, body: dict[str, Any]) -> _Call:
    fields = check_fields(body, shapes.ChatFields)
    ollama = _shaped(shapes.chat_body, fields)
    req = InferenceRequest.chat(fields.model, ollama["messages"],
                                priority=priority_of(request, body), stream=fields.stream,
                                **_rest(ollama, "messages"))
    return _Call(req, "chat", f"chatcmpl-{req.id}", _include_usage(fields))


def _parse_completion(request: web.Request, body: dict[str, Any]) -> _Call:
    fields = check_fields(body, shapes.CompletionFields)
    ollama = _shaped(shapes.completion_body, fields)
    req = InferenceRequest.generate(fields.model, ollama["prompt"],
                                    priority=priority_of(request, body), stream=fields.stream,
                                    **_rest(ollama, "prompt"))
    return _Call(req, "completion", f"cmpl-{req.id}", _include_usage(fields))


def _parse_embedding(request: web.Request, body: dict[str, Any]) -> _Call:
    fields = check_fields(body, shapes.EmbeddingFields)
    ollama = _shaped(shapes.embedding_body, fields)
    req = InferenceRequest.embed(fields.model, ollama["input"],
                                 priority=priority_of(request, body), **_rest(ollama, "input"))
    return _Call(req, "embedding", encoding_format=fields.encoding_format)


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _parse_chat)


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _parse_completion)


async def _embeddings(request: web.Request) -> web.StreamResponse:
    return await _serve(request, _parse_embedding)


async def _serve(request: web.Request,
                 parse: Callable[[web.Request, dict[str, Any]], _Call]) -> web.StreamResponse:
    """Check, place and answer one request; every failure before the first byte is an
    OpenAI-shaped error with its status."""
    try:
        call = parse(request, await read_json(request))
        router = _router(request)
        try:
            if not call.request.stream:
                chunks, reply = await router.collect(call.request)
                for chunk in chunks:
                    _raise_relayed_error(chunk)
                return web.json_response(call.answer(chunks), headers=routing_headers(reply))
            reply = await router.open(call.request)
        except Exception as exc:
            raise error_for(exc, call.request, router) from None
        return await _stream(request, router, reply, call)
    except ApiError as exc:
        return _error(exc)


def _error(exc: ApiError) -> web.Response:
    return web.json_response(_error_body(exc), status=exc.status, headers=exc.headers)


def _error_body(exc: ApiError) -> dict[str, Any]:
    return openai_error_body(exc.status, exc.message, kind=exc.kind)


class _ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


async def _stream(request: web.Request, router: Router, reply: Reply,
                  call: _Call) -> web.StreamResponse:
    """Relay the reply as SSE, one write per event; a failure after the first byte becomes a last
    ``data: {"error": ...}`` event (and no ``[DONE]``), never a silent truncation."""
    assert call.kind != "embedding"
    converter = codec.StreamEncoder(kind=call.kind, id=call.id, model=call.request.model,
                                    include_usage=call.include_usage)
    response = web.StreamResponse(headers={
        **routing_headers(reply), "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache"})
    received = 0
    stream = aiter(reply)
    try:
        await _write(response, request=request)
        async for chunk in stream:
            _raise_relayed_error(chunk)
            received += 1
            for event in converter.feed(chunk):
                await _write(response, _event(event))
        for event in converter.close():
            await _write(response, _event(event))
        await _write(response, b"data: [DONE]\n\n")
    except _ClientGone:
        await reply.close(received, "the client went away mid-stream")
    except asyncio.CancelledError:  # the server cancels handlers of vanished clients
        await reply.close(received, "cancelled mid-stream")
        raise
    except Exception as exc:
        await reply.close(received, _describe(exc))
        failure = error_for(exc, call.request, router)
        with contextlib.suppress(_ClientGone):
            await _write(response, _event(_error_body(failure)))
    finally:
        await _aclose(stream)
    return response


def _event(data: Mapping[str, Any]) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


async def _write(response: web.StreamResponse, data: bytes = b"", *,
                 request: web.Request | None = None) -> None:
    """Send headers (with ``request``) or bytes; a vanished client raises :class:`_ClientGone`."""
    try:
        if request is not None:
            await response.prepare(request)
        else:
            await response.write(data)
    except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError included
        raise _ClientGone() from exc


def _raise_relayed_error(chunk: Chunk) -> None:
    """A backend that relays Ollama's ``{"error": ...}`` line fails the stream here."""
    error = chunk.get("error")
    if error is not None:
        raise BackendError(error if isinstance(error, str) else json.dumps(error))


async def _aclose(stream: AsyncIterator[Chunk]) -> None:
    """Close the reply's iterator now (its ``finally`` releases the node), not at GC."""
    closer: Any = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _models(request: web.Request) -> web.Response:
    """Every model of the fleet once (an empty list, where Ollama would say ``null``)."""
    entries = catalogue(_router(request).fleet.snapshot())
    data = [_model_entry(e.info.name, e.info.modified_at) for e in entries]
    return web.json_response({"object": "list", "data": data})


async def _model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    for entry in catalogue(_router(request).fleet.snapshot()):
        if model_key(entry.info.name) == model_key(name):
            return web.json_response(_model_entry(name, entry.info.modified_at))
    return _error(ApiError(404, f"model '{name}' not found"))


def _model_entry(name: str, modified_at: str) -> dict[str, Any]:
    """``owned_by`` is the name's namespace (``library`` by default), ``created`` its mtime."""
    parts = name.split("/")
    return {"id": name, "object": "model", "created": _epoch(modified_at),
            "owned_by": parts[-2] if len(parts) >= 2 and parts[-2] else "library"}


def _epoch(timestamp: str) -> int:
    """Seconds since the epoch of an RFC 3339 time (Go writes nanoseconds); 0 if unreadable."""
    text = _FRACTION.sub(r"\1", timestamp.strip()).replace("Z", "+00:00")
    try:
        return max(int(datetime.fromisoformat(text).timestamp()), 0)
    except ValueError:
        return 0


_FRACTION = re.compile(r"(\.\d{6})\d+")
