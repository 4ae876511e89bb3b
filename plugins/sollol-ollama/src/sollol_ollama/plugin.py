"""The sollol-ollama plugin's hooks: discovery, probe, execution and lifespan for kind "ollama"."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence

from sollol_core.config import Settings
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.http import Sessions
from sollol_core.types import Decision, Endpoint, InferenceRequest, NodeSnapshot
from sollol_ollama.discovery import KIND, Discovery
from sollol_ollama.executor import execute
from sollol_ollama.probe import Prober

_sessions = Sessions()
_discovery = Discovery()
_prober = Prober()


@hookimpl
def sollol_lifespan(settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    return _sessions.hold()


@hookimpl
def sollol_discover(settings: Settings) -> Awaitable[Sequence[Endpoint]]:
    async def discover() -> Sequence[Endpoint]:
        async with _sessions.session() as session:
            return await _discovery.discover(session, settings)

    return discover()


@hookimpl
def sollol_probe(endpoint: Endpoint, settings: Settings) -> Awaitable[NodeSnapshot] | None:
    if endpoint.kind != KIND:
        return None

    async def probe() -> NodeSnapshot:
        async with _sessions.session() as session:
            return await _prober.probe(session, endpoint, settings)

    return probe()


@hookimpl
def sollol_execute(request: InferenceRequest, decision: Decision) -> AsyncIterator[Chunk] | None:
    target = decision.target
    if target is None or target.kind != KIND:
        return None
    return _run(request, target)


async def _run(request: InferenceRequest, target: Endpoint) -> AsyncIterator[Chunk]:
    async with _sessions.session() as session:
        async for chunk in execute(session, request, target, _prober.forget):
            yield chunk
