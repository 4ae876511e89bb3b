"""Circuit breakers through a real ``sollol serve``: a client cannot open a node's circuit, a
trial whose client leaves does not leave the circuit stuck, and a node that comes back rejoins
at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from sollol_ollama.testing import OllamaEmulator

HI = [{"role": "user", "content": "hi"}]


async def chat(url: str, **body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False,
                                     **body}) as response:
        return response.status, await response.json()


async def circuits(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{url}/api/sollol/status") as response:
        status = await response.json()
    return {c["node"]: c["state"] for c in status["circuits"]}


async def test_a_clients_bad_requests_never_open_a_nodes_circuit(serve: Any) -> None:
    async with OllamaEmulator(name="a") as a, OllamaEmulator(name="b") as b:
        gateway = await serve([a.address, b.address])
        for _ in range(12):
            status, body = await chat(gateway.url, keep_alive="bogus")
            # relayed in Ollama's shape and words, not retried on the other node
            assert (status, body) == (400, {"error": 'time: invalid duration "bogus"'})
        assert set((await circuits(gateway.url)).values()) <= {"closed"}
        for _ in range(4):  # both nodes still serve
            status, body = await chat(gateway.url)
            assert status == 200 and body["done"] is True


async def test_a_half_open_trial_whose_client_leaves_does_not_block_the_node(serve: Any) -> None:
    # Probes every 20 s: only requests can close this circuit here.
    async with OllamaEmulator(name="a", tokens_per_s=5, reply_words=40) as node:
        gateway = await serve([node.address], SOLLOL_HEALTH_INTERVAL="20")
        node.fail_next("error500", 4)
        for _ in range(4):
            assert (await chat(gateway.url))[0] == 502
        assert (await circuits(gateway.url))[f"ollama://{node.address}"] == "open"
        await asyncio.sleep(5.5)  # the cool-down: the next request is the trial
        async with aiohttp.ClientSession() as session, session.post(
                f"{gateway.url}/api/chat",
                json={"model": "llama3.2", "messages": HI, "stream": True}) as response:
            assert response.status == 200
            await response.content.readline()  # one token, then the client leaves
        await asyncio.sleep(0.5)
        node.reply_words = 4
        status, body = await chat(gateway.url)
        assert status == 200, body
        assert body["message"]["content"].startswith("a")


async def test_a_restarted_node_rejoins_within_a_probe_interval(serve: Any) -> None:
    async with OllamaEmulator(name="a") as node:
        gateway = await serve([node.address], SOLLOL_HEALTH_INTERVAL="0.3")
        for _ in range(2):  # failing twice: its circuit now stays open for 10 s
            node.fail_next("error500", 4)
            for _ in range(4):
                await chat(gateway.url)
            assert (await circuits(gateway.url))[f"ollama://{node.address}"] == "open"
            await asyncio.sleep(5.5)
        await node.stop()  # the node goes down (probes see it) and is restarted
        await asyncio.sleep(1.0)
        await node.start()
        restarted = time.monotonic()
        while (status := (await chat(gateway.url))[0]) != 200:
            assert status in (404, 503)  # down, then behind its open circuit
            # its cool-down is not what brings it back: its probe is
            assert time.monotonic() - restarted < 4, "the restarted node was not used"
            await asyncio.sleep(0.2)
        assert (await circuits(gateway.url))[f"ollama://{node.address}"] == "closed"
