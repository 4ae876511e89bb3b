"""Which RPC workers discovery lets into the fleet: an rpc-server on localhost's port 50052 only
when no llama.cpp node is named, or by explicit opt-in (it would get model layers)."""

from __future__ import annotations

import pytest
from sollol_llamacpp import plugin
from sollol_llamacpp.sweep import LocalhostWorker

from sollol_core import HybridRouter
from sollol_core.config import Settings


@pytest.fixture
def localhost_worker(shared_workers: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A real worker on another port stands in for the rpc-server on localhost:50052."""
    host, port = shared_workers[0].rsplit(":", 1)
    monkeypatch.setattr(plugin, "_localhost_worker", LocalhostWorker(host, int(port)))
    return shared_workers[0]


async def test_a_bare_hybrid_router_finds_the_rpc_server_on_localhost(
        localhost_worker: str) -> None:
    async with HybridRouter(enable_distributed=True) as router:
        stats = router.get_stats()
    assert stats["active_rpc_backends"] == [localhost_worker]
    sources = {n["endpoint"]["port"]: n["endpoint"]["source"] for n in stats["nodes"]
               if n["endpoint"]["kind"] == "llamacpp-rpc"}
    assert sources == {int(localhost_worker.rsplit(":", 1)[1]): "localhost"}


@pytest.mark.parametrize(("environ", "localhost_found"), [
    ({"RPC_BACKENDS": "{named}"}, False),
    ({"SOLLOL_LLAMACPP_SERVERS": "127.0.0.1:9"}, False),
    ({"RPC_BACKENDS": "{named}", "SOLLOL_IMPLICIT_NODES": "true"}, True),
    ({}, True),
    ({"SOLLOL_IMPLICIT_NODES": "false"}, False),
], ids=["workers-named", "server-named", "named-and-opt-in", "nothing-named-auto",
        "nothing-named-never"])
async def test_the_localhost_worker_joins_only_without_llamacpp_nodes_or_by_opt_in(
        localhost_worker: str, shared_workers: list[str], environ: dict[str, str],
        localhost_found: bool) -> None:
    named = shared_workers[1]
    settings = Settings.load(environ={k: v.format(named=named) for k, v in environ.items()})
    found = {e.address: e.source for e in await plugin.sollol_discover(settings)}
    assert (localhost_worker in found) is localhost_found
    if localhost_found:
        assert found[localhost_worker] == "localhost"
    if "RPC_BACKENDS" in environ:
        assert found[named] == "config"
