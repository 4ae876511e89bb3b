"""Which RPC workers discovery lets into the fleet: an rpc-server on localhost's port 50052 only
when no llama.cpp node is named, or by explicit opt-in (it would get model layers)."""

from __future__ import annotations

import pytest
from sollol_llamacpp.plugin import LlamacppPlugin
from sollol_llamacpp.sweep import LocalhostWorker

from sollol_core import HybridRouter
from sollol_core.config import Settings


@pytest.fixture
def localhost_worker(shared_workers: list[str]) -> LocalhostWorker:
    """A real worker on another port stands in for the rpc-server on localhost:50052 (given to
    a plugin object as its ``localhost_worker``)."""
    host, port = shared_workers[0].rsplit(":", 1)
    return LocalhostWorker(host, int(port))


async def test_a_bare_hybrid_router_finds_the_rpc_server_on_localhost(
        localhost_worker: LocalhostWorker, shared_workers: list[str]) -> None:
    hybrid = HybridRouter(enable_distributed=True)
    plugin = hybrid.pool.router.plugins.get(LlamacppPlugin)
    assert plugin is not None
    plugin.localhost_worker = localhost_worker
    async with hybrid as router:
        stats = router.get_stats()
    assert stats["active_rpc_backends"] == [shared_workers[0]]
    sources = {n["endpoint"]["port"]: n["endpoint"]["source"] for n in stats["nodes"]
               if n["endpoint"]["kind"] == "llamacpp-rpc"}
    assert sources == {localhost_worker.port: "localhost"}


@pytest.mark.parametrize(("environ", "localhost_found"), [
    ({"RPC_BACKENDS": "{named}"}, False),
    ({"SOLLOL_LLAMACPP_SERVERS": "127.0.0.1:9"}, False),
    ({"RPC_BACKENDS": "{named}", "SOLLOL_IMPLICIT_NODES": "true"}, True),
    ({}, True),
    ({"SOLLOL_IMPLICIT_NODES": "false"}, False),
], ids=["workers-named", "server-named", "named-and-opt-in", "nothing-named-auto",
        "nothing-named-never"])
async def test_the_localhost_worker_joins_only_without_llamacpp_nodes_or_by_opt_in(
        localhost_worker: LocalhostWorker, shared_workers: list[str], environ: dict[str, str],
        localhost_found: bool) -> None:
    named = shared_workers[1]
    settings = Settings.load(environ={k: v.format(named=named) for k, v in environ.items()})
    plugin = LlamacppPlugin(settings, localhost_worker=localhost_worker)
    found = {e.address: e.source for e in await plugin.sollol_discover(settings)}
    local = shared_workers[0]
    assert (local in found) is localhost_found
    if localhost_found:
        assert found[local] == "localhost"
    if "RPC_BACKENDS" in environ:
        assert found[named] == "config"
