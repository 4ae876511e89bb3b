"""The Python API (the original SOLLOL's OllamaPool and HybridRouter) over emulated Ollama nodes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sollol_ollama.testing import EmulatorFleet

from sollol_core import OllamaPool, Priority, sync


async def test_async_pool_over_named_nodes_routes_and_reports() -> None:
    async with EmulatorFleet.of(2) as fleet:
        async with OllamaPool(fleet.addresses) as pool:
            reply = await pool.chat("llama3.2", [{"role": "user", "content": "hi"}],
                                    priority=Priority.HIGH)
            vectors = await pool.embed("all-minilm", ["a", "b"])
    assert reply["message"]["content"].split()[0] in {"node0", "node1"}
    assert reply["_routing"]["backend"] == "ollama"
    assert reply["_routing"]["node"] in fleet.addresses
    assert len(vectors["embeddings"]) == 2


@pytest.fixture
def fleet_in_thread() -> Iterator[EmulatorFleet]:
    """Emulators on their own loop, so synchronous code in the test can call them."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fleet = EmulatorFleet.of(3)
    asyncio.run_coroutine_threadsafe(fleet.start(), loop).result(10)
    try:
        yield fleet
    finally:
        asyncio.run_coroutine_threadsafe(fleet.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_sync_auto_configure_reads_ollama_nodes_from_the_environment(
        fleet_in_thread: EmulatorFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_NODES", ",".join(fleet_in_thread.addresses))
    monkeypatch.setenv("SOLLOL_LOAD_PLUGINS", "ollama")
    pool = sync.OllamaPool.auto_configure()
    try:
        answers = {pool.chat(model="llama3.2",
                             messages=[{"role": "user", "content": "hi"}])["_routing"]["node"]
                   for _ in range(6)}
        streamed = "".join(c["response"] for c in pool.generate("llama3.2", "hi", stream=True))
        nodes = {n["endpoint"]["port"] for n in pool.stats()["nodes"]}
    finally:
        pool.close()
    assert answers <= set(fleet_in_thread.addresses)
    assert streamed.split()[0] in {"node0", "node1", "node2"}
    assert nodes == {e.port for e in fleet_in_thread}


def test_sync_hybrid_router_route_request(fleet_in_thread: EmulatorFleet) -> None:
    with sync.HybridRouter(ollama_pool=sync.OllamaPool(fleet_in_thread.addresses),
                           enable_distributed=True) as router:
        reply = router.route_request(model="llama3.2",
                                     messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert router.should_use_distributed("llama3.2") is False
        assert router.get_stats()["requests"] == 1
    assert reply["done_reason"] == "length"
    assert len(reply["message"]["content"].split()) == 2
