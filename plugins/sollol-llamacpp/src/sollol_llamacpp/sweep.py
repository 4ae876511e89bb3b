"""An optional sweep of the configured networks for RPC workers on port 50052.

A host counts only if it answers the RPC HELLO (any protocol version): an open port that says
nothing is not a worker. Results are reused for a minute, as the sweep is much slower than a probe.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable

from attrs import define, field

from sollol_core.types import Endpoint
from sollol_llamacpp.rpc_probe import probe_rpc
from sollol_llamacpp.workers import FIRST_PORT, KIND

CONCURRENCY = 64
TTL_S = 60.0


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
            if status.state in ("ok", "incompatible"):
                return Endpoint(KIND, host, port, source="network")
            return None

        hosts = [str(ip) for net in key[:-1]
                 for ip in ipaddress.ip_network(net, strict=False).hosts()]
        found = [e for e in await asyncio.gather(*(check(h) for h in hosts)) if e is not None]
        self._cache[key] = (time.monotonic(), found)
        return found
