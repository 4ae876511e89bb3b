"""The Python API (async and the sync mirror) over a fleet of static nodes."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path

import pytest
from attrs import evolve
from sollol_llamacpp.settings import LlamacppSettings

from sollol_core import HybridRouter, OllamaPool, Priority, sync
from sollol_core.config import PluginSettings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.plugins import Plugins
from sollol_core.testing import Recorder, StaticBackend, node
from sollol_core.types import Health


def plugins(backend: StaticBackend, *more: tuple[str, object]) -> Plugins:
    return Plugins.load(PluginSettings(load=()), extra=[("static", backend), *more])


def two_nodes(**fail: int) -> StaticBackend:
    return StaticBackend([node("a", models=["llama3.2"]),
                          node("b", models=["llama3.2"], in_flight=2)], fail=dict(fail))


def test_priority_constants_match_the_seed() -> None:
    assert (Priority.CRITICAL, Priority.URGENT, Priority.HIGH, Priority.NORMAL, Priority.LOW,
            Priority.BATCH) == (10, 9, 7, 5, 3, 1)


async def test_chat_returns_the_answer_with_routing() -> None:
    async with OllamaPool(plugins=plugins(two_nodes())) as pool:
        response = await pool.chat("llama3.2", [{"role": "user", "content": "Hi"}],
                                   priority=Priority.HIGH)
    assert response["message"]["content"] == "answered by a"
    routing = response["_routing"]
    assert routing["node"] == "a:11434" and routing["backend"] == "static"
    assert routing["attempts"] == 1 and "best of 2" in routing["reason"]
    assert set(routing) >= {"backend", "node", "reason", "duration_ms", "queue_ms", "attempts"}


async def test_streaming_relays_every_chunk() -> None:
    async with OllamaPool(plugins=plugins(two_nodes())) as pool:
        stream = await pool.generate("llama3.2", "Hi", stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c["response"] for c in chunks) == "answered by a "
    assert [c["done"] for c in chunks] == [False, False, False, True]


async def test_fails_over_before_the_first_chunk_and_never_twice_to_one_node() -> None:
    recorder = Recorder()
    async with OllamaPool(plugins=plugins(two_nodes(a=5), ("rec", recorder))) as pool:
        response = await pool.chat("llama3.2", [])
    assert response["message"]["content"] == "answered by b"
    assert response["_routing"]["attempts"] == 2
    assert [d.target.host for d in recorder.decisions] == ["a", "b"]


async def test_when_every_node_fails_the_error_lists_each_attempt() -> None:
    recorder = Recorder()
    async with OllamaPool(plugins=plugins(two_nodes(a=5, b=5), ("rec", recorder))) as pool:
        with pytest.raises(BackendError, match=r"a refused.*b refused"):
            await pool.chat("llama3.2", [])
    assert [r.ok for r in recorder.finished] == [False]


async def test_unknown_model_is_refused_with_the_reason() -> None:
    async with OllamaPool(plugins=plugins(two_nodes())) as pool:
        with pytest.raises(NoRouteError, match="model 'ghost' is on no healthy node"):
            await pool.chat("ghost", [])


async def test_bad_priority_is_rejected() -> None:
    async with OllamaPool(plugins=plugins(two_nodes())) as pool:
        with pytest.raises(ValueError, match="priority must be an integer from 1 to 10"):
            await pool.chat("llama3.2", [], priority=11)


async def test_hybrid_router_routes_and_counts() -> None:
    pool = OllamaPool(plugins=plugins(two_nodes()))
    async with HybridRouter(pool, enable_distributed=True,
                            rpc_backends=[{"host": "127.0.0.1", "port": 50052}]) as router:
        response = await router.route_request("llama3.2", [{"role": "user", "content": "Hi"}],
                                              max_tokens=8)
        assert await router.should_use_distributed("llama3.2") is False
        stats = router.get_stats()
    assert response["_routing"]["node"] == "a:11434"
    assert stats["requests"] == 1 and stats["distributed_requests"] == 0
    assert pool.router.settings.section(LlamacppSettings).rpc_backends == ("127.0.0.1:50052",)


async def test_one_gguf_path_never_answers_for_a_model_the_fleet_knows(tmp_path: Path) -> None:
    gguf = tmp_path / "other-model.gguf"
    gguf.write_bytes(b"GGUF")
    backend = two_nodes()
    pool = OllamaPool(plugins=plugins(backend))
    hi = [{"role": "user", "content": "Hi"}]
    async with HybridRouter(pool, enable_distributed=True, gguf_path=gguf) as router:
        backend.nodes = [evolve(n, health=Health.DOWN, models=()) for n in backend.nodes]
        await pool.router.fleet.refresh()  # every node that holds llama3.2 is down now
        with pytest.raises(NoRouteError):
            await router.route_request("llama3.2", hi)
        models = pool.router.settings.section(LlamacppSettings).models
        assert "llama3.2" not in models  # its name means its own weights, not that file
        with pytest.raises(NoRouteError):  # no RPC worker here to run it
            await router.route_request("mystery", hi)
        models = pool.router.settings.section(LlamacppSettings).models
        assert models["mystery"] == str(gguf)  # a name no node ever listed gets the file


async def test_rpc_backends_given_to_a_running_pool_are_used_by_its_next_request() -> None:
    with socket.socket() as s:  # a port nothing listens on: the worker is known, and down
        s.bind(("127.0.0.1", 0))
        worker = f"127.0.0.1:{s.getsockname()[1]}"
    pool = OllamaPool(plugins=Plugins.load(PluginSettings(load=("llamacpp",)),
                                           extra=[("static", two_nodes())]))
    await pool.start()  # as OllamaPool.auto_configure() leaves it
    try:
        router = HybridRouter(pool, enable_distributed=True, rpc_backends=[worker])
        await router.route_request("llama3.2", [{"role": "user", "content": "Hi"}])
        known = {n.endpoint.address for n in pool.router.fleet.snapshot().nodes}
        assert worker in known  # not only after the next probe round (5 s)
    finally:
        await pool.close()


def test_hybrid_router_takes_llamacpp_settings_its_arguments_do_not_override() -> None:
    from sollol_core.config import Settings

    settings = Settings(plugins=PluginSettings(load=())).with_sections(
        LlamacppSettings(layer_strategy="even", coordinator_timeout_s=30.0))
    router = HybridRouter(settings=settings, plugins=plugins(two_nodes()))
    own = router.pool.router.settings.section(LlamacppSettings)
    assert (own.layer_strategy, own.coordinator_timeout_s) == ("even", 30.0)
    assert (router.layer_strategy, router.coordinator_timeout) == ("even", 30.0)
    given = HybridRouter(settings=settings, plugins=plugins(two_nodes()),
                         layer_strategy="memory_aware", coordinator_timeout=60)
    assert given.pool.router.settings.section(LlamacppSettings).layer_strategy == "memory_aware"
    assert given.coordinator_timeout == 60


async def test_hybrid_router_without_the_llamacpp_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sollol_llamacpp.settings", None)  # not installed
    pool = OllamaPool(plugins=plugins(two_nodes()))
    async with HybridRouter(pool) as router:  # nothing asked of llama.cpp: runs whole
        response = await router.route_request("llama3.2", [{"role": "user", "content": "Hi"}])
    assert response["_routing"]["node"] == "a:11434"
    with pytest.raises(ImportError, match="pip install sollol-llamacpp"):
        HybridRouter(OllamaPool(plugins=plugins(two_nodes())), enable_distributed=True)


def test_hybrid_router_rejects_an_unknown_layer_strategy() -> None:
    with pytest.raises(ValueError, match="layer_strategy"):
        HybridRouter(OllamaPool(plugins=plugins(two_nodes())), layer_strategy="random")


def test_sync_mirror_chat_stream_and_close() -> None:
    with sync.OllamaPool(plugins=plugins(two_nodes())) as pool:
        response = pool.chat("llama3.2", [{"role": "user", "content": "Hi"}])
        words = [c["message"]["content"] for c in pool.chat("llama3.2", [], stream=True)]
        embedded = pool.embed("llama3.2", "text")
    assert response["_routing"]["node"] == "a:11434"
    assert "".join(words) == "answered by a "
    assert embedded["embeddings"] == [[0.0, 1.0]]
    assert sync.OllamaPool.chat.__doc__ == OllamaPool.chat.__doc__


def test_sync_mirror_works_inside_a_running_event_loop() -> None:
    async def application() -> str:
        # A synchronous library call made from async code: it must not need this loop.
        with sync.OllamaPool(plugins=plugins(two_nodes())) as pool:
            return str(pool.generate("llama3.2", "Hi")["response"])

    assert asyncio.run(application()) == "answered by a"


def test_sync_hybrid_router_shares_the_pool() -> None:
    pool = sync.OllamaPool(plugins=plugins(two_nodes()))
    with sync.HybridRouter(ollama_pool=pool) as router:
        response = router.route_request("llama3.2", [{"role": "user", "content": "Hi"}])
        assert router.get_stats()["requests"] == 1
        assert router.should_use_distributed("llama3.2") is False
    assert response["_routing"]["node"] == "a:11434"
    assert [t.name for t in threading.enumerate()].count("sollol-sync-loop") == 1
