"""The sollol-ollama plugin: discovery, probe and execution for endpoints of kind "ollama".

The ``ollama`` entry point names :class:`OllamaPlugin`; each router builds its own, so routers
in one process share no connection pool and no probe memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence

from attrs import define, field

from sollol_core.config import Settings, SettingsSection
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.http import Sessions
from sollol_core.types import Decision, Endpoint, InferenceRequest, NodeSnapshot
from sollol_ollama.discovery import KIND, Discovery
from sollol_ollama.executor import execute
from sollol_ollama.probe import Prober
from sollol_ollama.settings import SECTION


@define(eq=False)  # a plugin object is itself: hashable, compared by identity
class OllamaPlugin:
    """One router's Ollama backend: its HTTP sessions, discovery and probe memory."""

    settings: Settings = field(factory=Settings)
    sessions: Sessions = field(factory=Sessions)
    discovery: Discovery = field(factory=Discovery)
    prober: Prober = field(factory=Prober)

    @staticmethod
    @hookimpl
    def sollol_settings_sections() -> SettingsSection:
        return SECTION

    @hookimpl
    def sollol_lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.sessions.hold()

    @hookimpl
    def sollol_discover(self, settings: Settings) -> Awaitable[Sequence[Endpoint]]:
        async def discover() -> Sequence[Endpoint]:
            async with self.sessions.session() as session:
                return await self.discovery.discover(session, settings)

        return discover()

    @hookimpl
    def sollol_probe(self, endpoint: Endpoint,
                     settings: Settings) -> Awaitable[NodeSnapshot] | None:
        if endpoint.kind != KIND:
            return None

        async def probe() -> NodeSnapshot:
            async with self.sessions.session() as session:
                return await self.prober.probe(session, endpoint, settings)

        return probe()

    @hookimpl
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        target = decision.target
        if target is None or target.kind != KIND:
            return None
        session = self.sessions.current()
        if session is not None:  # the usual case: no wrapper between the chunks and the router
            return execute(session, request, target, self.prober.forget)
        return self._run(request, target)

    async def _run(self, request: InferenceRequest, target: Endpoint) -> AsyncIterator[Chunk]:
        async with self.sessions.session() as session:
            async for chunk in execute(session, request, target, self.prober.forget):
                yield chunk
