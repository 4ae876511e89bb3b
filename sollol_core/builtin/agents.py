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

from attrs import frozen

from sollol_core.agent.client import AgentClient, AgentError, agent_endpoints
from sollol_core.config import Settings
from sollol_core.hookspecs import hookimpl
from sollol_core.http import Sessions
from sollol_core.types import Endpoint, Telemetry

log = logging.getLogger(__name__)

_sessions = Sessions()


@frozen
class Seen:
    """The last telemetry round with one agent, for ``sollol status``."""

    ok: bool
    at: float
    detail: str = ""


_seen: dict[str, Seen] = {}


@hookimpl
def sollol_lifespan(settings: Settings) -> contextlib.AbstractAsyncContextManager[None] | None:
    return _running(settings) if settings.discovery.agents else None


@contextlib.asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[None]:
    """Pooled connections to the agents while a router runs; their status goes with it."""
    try:
        async with _sessions.hold():
            yield
    finally:
        for agent in agent_endpoints(settings):
            _seen.pop(agent.address, None)


@hookimpl
def sollol_collect_telemetry(settings: Settings) -> Awaitable[Sequence[Telemetry]] | None:
    agents = agent_endpoints(settings)
    return _collect(agents, settings) if agents else None


async def _collect(agents: list[Endpoint], settings: Settings) -> Sequence[Telemetry]:
    async with _sessions.session() as session:
        reports = await asyncio.gather(
            *(_ask(AgentClient.of(agent, session, settings)) for agent in agents))
    return [r for r in reports if r is not None]


async def _ask(client: AgentClient) -> Telemetry | None:
    address = client.endpoint.address
    before = _seen.get(address)
    try:
        report = await client.telemetry()
    except AgentError as exc:
        if before is None or before.ok:
            log.warning("%s; placement goes without its telemetry until it answers", exc)
        _seen[address] = Seen(False, time.time(), str(exc))
        return None
    if before is not None and not before.ok:
        log.info("agent %s answers again", address)
    _seen[address] = Seen(True, time.time())
    return report


@hookimpl
def sollol_status() -> Mapping[str, Any] | None:
    if not _seen:
        return None
    return {"agents": {address: {"ok": seen.ok, "seen_at": round(seen.at, 1),
                                 "detail": seen.detail}
                       for address, seen in sorted(_seen.items())}}
