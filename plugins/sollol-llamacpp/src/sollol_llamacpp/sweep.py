"""RPC workers nobody named: an optional sweep of the configured networks for port 50052, and
an rpc-server on this machine's port 50052.

A host counts only if it answers the RPC HELLO (any protocol version): an open port that says
nothing is not a worker. Sweep results are reused for a minute, as the sweep is much slower than a
probe. The localhost worker (an implicit node) is tried only when no llama.cpp node is named, or
with ``discovery.implicit_nodes = true``: a configured list is the whole fleet, and whatever
answers on that port would otherwise get model layers and the activations of users' prompts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable

from attrs import define, field

from sollol_core.config import Settings
from sollol_core.types import Endpoint
from sollol_llamacpp.rpc_probe import probe_rpc
from sollol_llamacpp.settings import LlamacppSettings
from sollol_llamacpp.workers import FIRST_PORT, KIND

CONCURRENCY = 64
TTL_S = 60.0
#: The states of a host that speaks the RPC protocol (an incompatible one is shown as such).
ANSWERS = ("ok", "incompatible")


def implicit_workers_wanted(settings: Settings) -> bool:
    """Whether an rpc-server on localhost's default port joins the fleet:
    ``discovery.implicit_nodes``, or when that is unset (auto), only while no RPC worker and no
    llama-server is named."""
    choice = settings.discovery.implicit_nodes
    own = settings.section(LlamacppSettings)
    named = own.rpc_backends or own.servers
    return not named if choice is None else choice


@define
class LocalhostWorker:
    """An rpc-server on this machine's default port (tests stand a worker on another in)."""

    host: str = "127.0.0.1"
    port: int = FIRST_PORT

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(KIND, self.host, self.port, source="localhost")

    async def answers(self, timeout_s: float) -> bool:
        return (await probe_rpc(self.host, self.port, timeout_s=timeout_s)).state in ANSWERS


@define
class RpcSweep:
    _cache: dict[tuple[str, ...], tuple[float, list[Endpoint]]] = field(factory=dict)

    async def sweep(self, subnets: Iterable[str], timeout_s: float,
                    port: int = FIRST_PORT) -> list[Endpoint]:
        key = (*subnets, str(port))
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < TTL_S:
            return cached[1]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def check(host: str) -> Endpoint | None:
            async with gate:
                status = await probe_rpc(host, port, timeout_s=timeout_s)
            if status.state in ANSWERS:
                return Endpoint(KIND, host, port, source="network")
            return None

        hosts = [str(ip) for net in key[:-1]
                 for ip in ipaddress.ip_network(net, strict=False).hosts()]
        found = [e for e in await asyncio.gather(*(check(h) for h in hosts)) if e is not None]
        self._cache[key] = (time.monotonic(), found)
        return found
