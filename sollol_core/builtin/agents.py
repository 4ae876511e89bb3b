"""Telemetry from ``sollol agent`` daemons, so placement sees other machines' real memory.

Each agent named in ``[discovery] agents`` is asked for its machine's telemetry on the health
schedule; the report is filed under the agent's host, where
:meth:`~sollol_core.types.FleetSnapshot.free_bytes_of` finds it for every node on that host. An
agent that does not answer is logged when it stops answering and skipped; the others still count.
Block it with the plugin name ``builtin-agents``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any

from attrs import define, field, frozen

from sollol_core.agent.client import AgentClient, AgentError, agent_endpoints
from sollol_core.config import Settings
from sollol_core.hookspecs import hookimpl
from sollol_core.http import Sessions
from sollol_core.types import Endpoint, Telemetry

log = logging.getLogger(__name__)


@frozen
class Seen:
    """The last telemetry round with one agent, for ``sollol status``."""

    ok: bool
    at: float
    detail: str = ""


@define(eq=False)  # a plugin object is itself: hashable, compared by identity
class AgentTelemetry:
    """One router's connections to its agents, and what each said last."""

    settings: Settings = field(factory=Settings)
    sessions: Sessions = field(factory=Sessions)
    seen: dict[str, Seen] = field(factory=dict)

    @hookimpl
    def sollol_lifespan(
            self, settings: Settings) -> contextlib.AbstractAsyncContextManager[None] | None:
        return self._running() if settings.discovery.agents else None

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        """Pooled connections to the agents while the router runs; their status goes with it."""
        try:
            async with self.sessions.hold():
                yield
        finally:
            self.seen.clear()

    @hookimpl
    def sollol_collect_telemetry(self,
                                 settings: Settings) -> Awaitable[Sequence[Telemetry]] | None:
        agents = agent_endpoints(settings)
        return self._collect(agents, settings) if agents else None

    async def _collect(self, agents: list[Endpoint], settings: Settings) -> Sequence[Telemetry]:
        async with self.sessions.session() as session:
            reports = await asyncio.gather(
                *(self._ask(AgentClient.of(agent, session, settings)) for agent in agents))
        return [r for r in reports if r is not None]

    async def _ask(self, client: AgentClient) -> Telemetry | None:
        address = client.endpoint.address
        before = self.seen.get(address)
        try:
            report = await client.telemetry()
        except AgentError as exc:
            if before is None or before.ok:
                log.warning("%s; placement goes without its telemetry until it answers", exc)
            self.seen[address] = Seen(False, time.time(), str(exc))
            return None
        if before is not None and not before.ok:
            log.info("agent %s answers again", address)
        self.seen[address] = Seen(True, time.time())
        return report

    @hookimpl
    def sollol_status(self) -> Mapping[str, Any] | None:
        if not self.seen:
            return None
        return {"agents": {address: {"ok": seen.ok, "seen_at": round(seen.at, 1),
                                     "detail": seen.detail}
                           for address, seen in sorted(self.seen.items())}}
