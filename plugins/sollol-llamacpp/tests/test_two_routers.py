"""Two routers in one process, through the seed API: each with its own llama.cpp settings and its
own RPC workers, each sharding Gemma 3 270M through its own coordinator; stopping one leaves the
other serving (issue "plugin-objects")."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
from attrs import evolve
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.coordinator import Coordinator
from sollol_llamacpp.plugin import LlamacppPlugin
from sollol_llamacpp.settings import LlamacppSettings
from sollol_llamacpp.testing import rpc_workers

from sollol_core import HybridRouter
from sollol_core.config import Settings

from .test_sharding import wait_free

MODEL = "gemma3:270m"
HI = [{"role": "user", "content": "Hi"}]
SHORT = {"temperature": 0, "num_predict": 4, "seed": 1}


def settings(context_size: int) -> Settings:
    """This router's settings: only the llama.cpp plugin, the model always sharded."""
    base = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "llamacpp",
                                  "SOLLOL_HEALTH_INTERVAL": "0.5"})
    return base.with_sections(evolve(base.section(LlamacppSettings), shard=(MODEL,),
                                     context_size=context_size, parallel=1))


def plugin_of(hybrid: HybridRouter) -> LlamacppPlugin:
    plugin = hybrid.pool.router.plugins.get(LlamacppPlugin)
    assert plugin is not None
    return plugin


def coordinator_of(hybrid: HybridRouter) -> Coordinator:
    coordinators = plugin_of(hybrid).coordinators
    assert coordinators is not None
    (coordinator,) = coordinators.running.values()
    return coordinator


def used_workers(reply: Mapping[str, Any]) -> set[str]:
    routing = reply["_routing"]
    assert routing["backend"] == "sharded", routing
    return set(routing["node"].removeprefix("sharded:").split(","))


def argument(coordinator: Coordinator, option: str) -> str:
    """The value of ``option`` on the coordinator's command line (what llama-server runs with)."""
    argv = psutil.Process(coordinator.child.pid).cmdline()
    return argv[argv.index(option) + 1]


async def test_two_routers_with_their_own_settings_and_workers_shard_side_by_side(
        binaries: Binaries, gemma: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty-store"))  # only gguf_path serves
    with rpc_workers(binaries, 4, tmp_path) as workers:
        mine, theirs = workers[:2], workers[2:]
        first = HybridRouter(enable_distributed=True, rpc_backends=mine, gguf_path=gemma,
                             settings=settings(context_size=1024))
        second = HybridRouter(enable_distributed=True, rpc_backends=[
            {"host": a.split(":")[0], "port": int(a.split(":")[1])} for a in theirs],
            gguf_path=gemma, layer_strategy="even", settings=settings(context_size=512))
        try:
            await asyncio.gather(first.start(), second.start())
            one, two = plugin_of(first), plugin_of(second)
            assert one is not two  # each router built its own plugin object
            assert (one.options.context_size, one.options.layer_strategy) == (1024,
                                                                              "memory_aware")
            assert (two.options.context_size, two.options.layer_strategy) == (512, "even")
            # each fleet holds its own workers only
            assert sorted(first.get_stats()["active_rpc_backends"]) == sorted(mine)
            assert sorted(second.get_stats()["active_rpc_backends"]) == sorted(theirs)

            a, b = await asyncio.gather(
                first.route_request(MODEL, HI, options=SHORT),
                second.route_request(MODEL, HI, options=SHORT))
            assert used_workers(a) == set(mine) and used_workers(b) == set(theirs)
            assert "forced by [llamacpp] shard" in a["_routing"]["reason"]
            assert "RPC workers (memory_aware, layers " in a["_routing"]["reason"]
            assert "RPC workers (even, layers " in b["_routing"]["reason"]
            assert a["done"] and a["message"]["role"] == "assistant"
            assert b["done"] and b["message"]["role"] == "assistant"

            kept, other = coordinator_of(first), coordinator_of(second)
            assert {w.address for w in kept.workers} == set(mine)
            assert {w.address for w in other.workers} == set(theirs)
            assert kept.child.pid != other.child.pid and kept.alive and other.alive
            assert argument(kept, "-c") == "1024" and argument(other, "-c") == "512"
            assert {c["pid"] for c in first.get_stats()["coordinators"]} == {kept.child.pid}
            assert {c["pid"] for c in second.get_stats()["coordinators"]} == {other.child.pid}

            await first.close()
            assert one.coordinators is None
            assert not kept.alive  # stopped and reaped
            assert not psutil.pid_exists(kept.child.pid) \
                or psutil.Process(kept.child.pid).status() == psutil.STATUS_ZOMBIE
            await wait_free(mine)  # its workers were let go

            assert other.alive and coordinator_of(second) is other
            c = await second.route_request(MODEL, HI, options=SHORT)
            assert used_workers(c) == set(theirs) and c["done"]
            assert coordinator_of(second) is other and other.alive  # the same process served
            assert other.child.pid == coordinator_of(second).child.pid
        finally:
            await asyncio.gather(first.close(), second.close())
        assert plugin_of(second).coordinators is None and not other.alive
