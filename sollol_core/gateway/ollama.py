"""Ollama's native API, served for the whole fleet: the same paths, shapes, statuses and errors.

Request bodies are checked (types of known fields) and then passed on as the client sent them,
less SOLLOL's own ``priority`` field, so options and fields this module does not know still reach
the node.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from attrs import define

from sollol_core.chunks import fold
from sollol_core.convert import unstructure
from sollol_core.gateway.catalog import CatalogEntry, catalogue
from sollol_core.gateway.common import (
    ROUTER,
    ApiError,
    check_fields,
    error_for,
    priority_of,
    read_json,
    routing_headers,
)
from sollol_core.plugins import core_version
from sollol_core.types import InferenceRequest, Operation
from sollol_core.wirejson import dumps


@define
class _Common:
    """Fields every Ollama endpoint shares; ``Any`` where Ollama accepts several types."""

    model: str = ""
    name: str = ""  # deprecated alias of model on /api/show
    stream: bool | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None
    format: Any = None
    think: Any = None


@define
class _Generate(_Common):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    raw: bool | None = None
    images: list[str] | None = None
    context: list[int] | None = None


@define
class _Chat(_Common):
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None


@define
class _Embed(_Common):
    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = None


@define
class _Embeddings(_Common):
    prompt: str = ""


@define
class _Show(_Common):
    verbose: bool | None = None


_SHAPES: dict[Operation, type[_Common]] = {
    Operation.CHAT: _Chat, Operation.GENERATE: _Generate, Operation.EMBED: _Embed,
    Operation.EMBEDDINGS: _Embeddings, Operation.SHOW: _Show,
}
#: Ollama answers a missing model with 404 on these and 400 "model is required" on the others.
_MISSING_IS_404 = {Operation.GENERATE, Operation.EMBED}
_STREAMS = {Operation.CHAT, Operation.GENERATE}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", _root)
    app.router.add_get("/api/version", _version)
    app.router.add_get("/api/tags", _tags)
    app.router.add_get("/api/ps", _ps)
    for operation in _SHAPES:
        app.router.add_post(f"/api/{operation.value}", _inference_handler(operation))


def error_response(error: ApiError) -> web.Response:
    return web.json_response({"error": error.message}, status=error.status,
                             headers=dict(error.headers))


async def _root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


async def _version(request: web.Request) -> web.Response:
    """The oldest version in the fleet (what every node can do), and SOLLOL's own."""
    versions = [n.version for n in request.app[ROUTER].fleet.snapshot().healthy() if n.version]
    oldest = min(versions, key=_version_key, default=None)
    return web.json_response({"version": oldest or "0.0.0", "sollol": core_version()})


def _version_key(text: str) -> tuple[int, ...]:
    parts = text.split("-", 1)[0].split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def _model_entry(entry: CatalogEntry, *, running: bool) -> dict[str, Any]:
    info = entry.info
    item: dict[str, Any] = {
        "name": info.name, "model": info.name, "size": info.size_bytes, "digest": info.digest,
        "details": info.details or {"parent_model": "", "format": "gguf"},
    }
    if running:
        item.update(expires_at=info.expires_at, size_vram=info.vram_bytes)
        if info.context_length:
            item["context_length"] = info.context_length
        item["sollol_nodes"] = list(entry.loaded_on)
    else:
        item["modified_at"] = info.modified_at
        if info.capabilities:
            item["capabilities"] = list(info.capabilities)
        item["sollol_nodes"] = list(entry.nodes)
    return item


async def _tags(request: web.Request) -> web.Response:
    entries = catalogue(request.app[ROUTER].fleet.snapshot())
    return web.json_response({"models": [_model_entry(e, running=False) for e in entries]})


async def _ps(request: web.Request) -> web.Response:
    entries = catalogue(request.app[ROUTER].fleet.snapshot(), loaded_only=True)
    return web.json_response({"models": [_model_entry(e, running=True) for e in entries]})


def _inference_handler(operation: Operation) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        router = request.app[ROUTER]
        try:
            body = await read_json(request)
            fields = check_fields(body, _SHAPES[operation])
            model = fields.model or (fields.name if operation is Operation.SHOW else "")
            if not model:
                raise (ApiError(404, "model '' not found") if operation in _MISSING_IS_404
                       else ApiError(400, "model is required"))
            priority = priority_of(request, body)
        except ApiError as invalid:
            return error_response(invalid)
        stream = operation in _STREAMS and fields.stream is not False
        forwarded = {k: v for k, v in body.items() if k != "priority"}
        inference = InferenceRequest(operation=operation, model=model, body=forwarded,
                                     priority=priority, stream=stream)
        try:
            if not stream:
                chunks, reply = await router.collect(inference)
                return web.Response(body=_dumps(fold(operation, chunks)),
                                    headers=routing_headers(reply),
                                    content_type="application/json", charset="utf-8")
            reply = await router.open(inference)
        except Exception as exc:
            failed = error_for(exc, inference, router)
            if failed.status == 404 and operation in {Operation.EMBED, Operation.EMBEDDINGS}:
                failed = ApiError(404, f'model "{model}" not found, try pulling it first',
                                  failed.headers)
            return error_response(failed)
        return await _relay(request, reply, routing_headers(reply))

    handle.__name__ = f"ollama_{operation.value}"
    return handle


async def _relay(request: web.Request, reply: Any, headers: dict[str, str]) -> web.StreamResponse:
    """NDJSON, one chunk per line, written as it arrives. A failure after the first line ends
    the stream with Ollama's own ``{"error": ...}`` line (the status is already 200). A client
    that leaves mid-stream ends it quietly: the reply is closed at once (the node is released,
    the request recorded as closed early), and there is nobody left to answer."""
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/x-ndjson"})
    try:
        await response.prepare(request)
    except BaseException:  # the client left before the relay began: give the node back now
        await reply.close(0, "cancelled: the client went away")
        raise
    async with contextlib.aclosing(aiter(reply)) as chunks:
        try:
            async for chunk in chunks:
                await response.write(_dumps(chunk) + b"\n")
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError included
            return response
        except web.HTTPException:
            raise
        except Exception as exc:
            with contextlib.suppress(ConnectionResetError):
                await response.write(_dumps({"error": _stream_error(exc)}) + b"\n")
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def _stream_error(exc: Exception) -> str:
    return f"{exc}" if str(exc) else type(exc).__name__


def _dumps(value: Any) -> bytes:
    return dumps(value, unstructure)
