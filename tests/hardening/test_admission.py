"""Admission through a real ``sollol serve``: requests whose clients left are not run, and a
queue of work for a busy node never turns away a request for an idle one."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from sollol_ollama.testing import EmulatedModel, OllamaEmulator

from .conftest import eventually

HI = [{"role": "user", "content": "hi"}]


async def abandon(url: str, model: str = "llama3.2", stream: bool = False) -> None:
    """Send a chat and leave after 0.3 s, as a client that gave up would."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            async with session.post(f"{url}/api/chat", json={
                    "model": model, "messages": HI, "stream": stream}) as response:
                await response.read()
    except TimeoutError:
        return
    raise AssertionError("the request was answered before its client left")


async def queued(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"{url}/api/sollol/status") as response:
        return int((await response.json())["queued"])


async def test_requests_whose_clients_left_are_never_run(serve: Any) -> None:
    # One slot; each answer takes about 2 s.
    async with OllamaEmulator(name="one", tokens_per_s=5, reply_words=10) as node:
        gateway = await serve([node.address], SOLLOL_OLLAMA_PARALLEL="1")
        await asyncio.gather(*(abandon(gateway.url) for _ in range(30)))
        # the waiting ones left the queue at once ...
        await asyncio.sleep(0.3)
        assert await queued(gateway.url) == 0
        # ... and the running one was closed upstream: the node stops generating
        assert await eventually(lambda: node.in_flight == 0, 3.0)
        await asyncio.sleep(2.5)  # long enough for queued work to have reached the node
        assert len(node.requests) <= 2, f"{len(node.requests)} of 30 abandoned requests ran"


async def test_a_stream_whose_client_left_stops_at_the_node(serve: Any) -> None:
    async with OllamaEmulator(name="one", tokens_per_s=5, reply_words=50) as node:
        gateway = await serve([node.address])
        await abandon(gateway.url, stream=True)
        assert await eventually(lambda: node.in_flight == 0, 3.0)


async def test_a_full_queue_for_a_busy_node_does_not_refuse_an_idle_nodes_model(
        serve: Any) -> None:
    big = EmulatedModel("big:latest", parameter_size="70B", size_bytes=40 * 2**30,
                        capabilities=("completion",), context_length=8192, block_count=80)
    small = EmulatedModel("small:latest", parameter_size="1B", size_bytes=2**30,
                          capabilities=("completion",), context_length=8192, block_count=16)
    async with OllamaEmulator(name="busy", models=[big], tokens_per_s=2, reply_words=8) as busy, \
            OllamaEmulator(name="idle", models=[small]) as idle:
        gateway = await serve([busy.address, idle.address], SOLLOL_OLLAMA_PARALLEL="1",
                              SOLLOL_QUEUE_SIZE="4")
        async with aiohttp.ClientSession() as session:
            async def ask(model: str) -> int:
                async with session.post(f"{gateway.url}/api/chat", json={
                        "model": model, "messages": HI, "stream": False}) as response:
                    await response.read()
                    return response.status

            waiting = [asyncio.create_task(ask("big")) for _ in range(5)]  # 1 runs, 4 wait
            assert await eventually(lambda: busy.in_flight == 1)
            for _ in range(100):
                if await queued(gateway.url) == 4:
                    break
                await asyncio.sleep(0.05)
            assert await ask("big") == 503  # the bound holds for the busy node ...
            assert await ask("small") == 200  # ... and the idle node's model is served
            assert len(idle.requests) == 1
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
