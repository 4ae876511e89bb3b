"""Pooled HTTP client sessions for backend plugins: one per event loop, held open by a plugin's
lifespan.

A router's lifespan opens it; probes and requests on that loop reuse its connections (the
gateway's added latency depends on it). Called outside any lifespan, a short-lived session is made
for the one call. Each plugin keeps its own ``Sessions`` object.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from attrs import define, field

#: Ollama streams for minutes; only connecting is bounded here, the router bounds the rest.
NO_TOTAL_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)


@define
class _Held:
    session: aiohttp.ClientSession
    users: int = 0


@define
class Sessions:
    _by_loop: dict[asyncio.AbstractEventLoop, _Held] = field(factory=dict)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep this loop's session open for the duration (lifespans nest and count)."""
        loop = asyncio.get_running_loop()
        held = self._by_loop.get(loop)
        if held is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
            held = self._by_loop[loop] = _Held(aiohttp.ClientSession(
                connector=connector, timeout=NO_TOTAL_TIMEOUT))
        held.users += 1
        try:
            yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._by_loop[loop]
                await held.session.close()

    def current(self) -> aiohttp.ClientSession | None:
        """This loop's held session, if a lifespan holds one (call it on the loop)."""
        held = self._by_loop.get(asyncio.get_running_loop())
        return held.session if held is not None else None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        held = self._by_loop.get(asyncio.get_running_loop())
        if held is not None:
            yield held.session
            return
        async with aiohttp.ClientSession(timeout=NO_TOTAL_TIMEOUT) as temporary:
            yield temporary
