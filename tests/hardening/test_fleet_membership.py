"""Fleet membership: with a node list configured, prompts go only to the nodes it names, never to
whatever answers as ``OLLAMA_HOST`` (or on localhost's Ollama port)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from sollol_ollama.testing import OllamaEmulator

from .conftest import SOLLOL, Served, clean_env


async def sollol(*args: str) -> str:
    """``sollol <args>``'s standard output in an 80-column terminal; it must succeed."""
    process = await asyncio.create_subprocess_exec(
        SOLLOL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=clean_env(COLUMNS="80"))
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_prompts_go_only_to_the_configured_nodes_and_status_says_where_each_came_from(
        serve: Callable[..., Any]) -> None:
    # the stray node has the model loaded: a router that counted it would prefer it
    async with (OllamaEmulator(name="named") as named,
                OllamaEmulator(name="stray", loaded=["llama3.2"]) as stray):
        served: Served = await serve([named.address], OLLAMA_HOST=stray.address)
        chat = {"model": "llama3.2", "stream": False,
                "messages": [{"role": "user", "content": "a private prompt"}]}
        async with aiohttp.ClientSession() as session:

            async def ask() -> int:
                async with session.post(f"{served.url}/api/chat", json=chat) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(ask() for _ in range(10)))
        assert statuses == [200] * 10
        assert [path for path, _ in named.requests] == ["/api/chat"] * 10
        assert stray.requests == []

        status = json.loads(await sollol("status", "--url", served.url, "--json"))
        nodes = {n["endpoint"]["port"]: n["endpoint"]["source"] for n in status["fleet"]["nodes"]}
        assert nodes == {named.port: "config"}
        table = (await sollol("status", "--url", served.url)).split("Requests waiting")[0]
        assert "found via" in table and re.search(r"\bconfig\b", table)  # whole, not folded
        assert "OLLAMA_HOST" not in table


async def test_without_a_node_list_ollama_host_is_used_and_status_names_it(
        serve: Callable[..., Any]) -> None:
    async with OllamaEmulator(name="ollama-host") as node:
        served: Served = await serve([], OLLAMA_HOST=node.address)
        async with aiohttp.ClientSession() as session, session.post(
                f"{served.url}/api/chat", json={"model": "llama3.2", "stream": False,
                                                "messages": []}) as response:
            assert response.status == 200
        assert [path for path, _ in node.requests] == ["/api/chat"]

        status = json.loads(await sollol("status", "--url", served.url, "--json"))
        nodes = {n["endpoint"]["port"]: n["endpoint"]["source"] for n in status["fleet"]["nodes"]}
        assert nodes[node.port] == "OLLAMA_HOST"
        table = (await sollol("status", "--url", served.url)).split("Requests waiting")[0]
        assert re.search(r"\bOLLAMA_HOST\b", table)  # whole, not folded in 80 columns
