"""Finding llama.cpp RPC servers: one by address (``test_rpc_backend``), or this machine's and
the configured networks' (``discover_rpc_backends``). Each check speaks the RPC protocol
(HELLO), so a port that merely accepts connections does not count."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from sollol_core.plugins import plugin_attribute

__all__ = ["discover_rpc_backends", "find_rpc_backends", "test_rpc_backend"]

#: Ports looked at on this machine: the default and the next ones, where ``sollol llamacpp
#: workers start`` and the guide's auto-setup put further workers.
LOCAL_PORTS = tuple(range(50052, 50060))

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run to the end, also from code that already runs an event loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def test_rpc_backend(host: str, port: int = 50052, timeout: float = 2.0) -> bool:
    """Whether an RPC server answers at ``host:port`` and is free to serve (not held by
    another coordinator, same protocol version)."""
    probe_rpc = plugin_attribute("sollol_llamacpp.rpc_probe", "probe_rpc", "sollol-llamacpp")
    status = _run(probe_rpc(host, port, timeout_s=timeout))
    return bool(status.state == "ok")


test_rpc_backend.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def discover_rpc_backends(subnets: Sequence[str] = (), *,
                          ports: Sequence[int] = LOCAL_PORTS,
                          timeout: float = 1.0) -> list[dict[str, Any]]:
    """RPC servers on this machine (``ports``: 50052 and up) and, when given, in ``subnets``
    (CIDR, e.g. ``["192.168.1.0/24"]``, port 50052), as ``{"host": ..., "port": ...}``."""
    return _run(find_rpc_backends(subnets, ports=ports, timeout=timeout))


async def find_rpc_backends(subnets: Sequence[str] = (), *,
                            ports: Sequence[int] = LOCAL_PORTS,
                            timeout: float = 1.0) -> list[dict[str, Any]]:
    """:func:`discover_rpc_backends` for async code."""
    probe_rpc = plugin_attribute("sollol_llamacpp.rpc_probe", "probe_rpc", "sollol-llamacpp")
    states = await asyncio.gather(*(probe_rpc("127.0.0.1", port, timeout_s=timeout)
                                    for port in ports))
    found = [{"host": "127.0.0.1", "port": port}
             for port, status in zip(ports, states, strict=True) if status.state == "ok"]
    if subnets:
        sweep_class = plugin_attribute("sollol_llamacpp.sweep", "RpcSweep", "sollol-llamacpp")
        for endpoint in await sweep_class().sweep(tuple(subnets), timeout):
            found.append({"host": endpoint.host, "port": endpoint.port})
    return found
