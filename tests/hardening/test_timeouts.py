"""Time limits through a real ``sollol serve``: a long healthy generation is never cut, a node
that goes silent is, and a caller's own timeout can raise the limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from sollol_ollama.testing import OllamaEmulator

from sollol_core.api import OllamaPool
from sollol_core.config import Settings

from .conftest import eventually

HI = [{"role": "user", "content": "hi"}]


async def test_a_long_non_streamed_answer_is_not_taken_for_a_missing_first_token(
        serve: Any) -> None:
    # 12 tokens at 4 a second: 3 s of healthy generation against a 1 s first-token limit.
    async with OllamaEmulator(name="slow", tokens_per_s=4, reply_words=12) as node:
        gateway = await serve([node.address], SOLLOL_FIRST_TOKEN_TIMEOUT="1",
                              SOLLOL_SILENCE_TIMEOUT="1")
        async with aiohttp.ClientSession() as session, session.post(
                f"{gateway.url}/api/chat",
                json={"model": "llama3.2", "messages": HI, "stream": False}) as response:
            body = await response.json()
        assert response.status == 200, body
        assert body["message"]["content"] == "slow" + "".join(f" word{i}" for i in range(1, 12))
        assert body["eval_count"] == 12 and body["done"] is True
        assert len(node.requests) == 1  # one attempt: nothing was retried


async def test_a_node_that_goes_silent_mid_answer_is_cut_off(serve: Any) -> None:
    async with OllamaEmulator(name="stalls", reply_words=8) as node:
        gateway = await serve([node.address], SOLLOL_SILENCE_TIMEOUT="1")
        node.fail_next("stall_midstream")
        started = time.monotonic()
        async with aiohttp.ClientSession() as session, session.post(
                f"{gateway.url}/api/chat",
                json={"model": "llama3.2", "messages": HI, "stream": True}) as response:
            lines = [line async for line in response.content if line.strip()]
        assert response.status == 200 and len(lines) >= 2
        assert b"the node sent nothing for 1 s" in lines[-1]
        assert time.monotonic() - started < 10  # not the 300 s request limit
        # the stalled upstream request was closed: the node is not left generating
        assert await eventually(lambda: node.in_flight == 0)


async def test_the_request_limit_ends_even_a_healthy_stream(serve: Any) -> None:
    async with OllamaEmulator(name="long", tokens_per_s=4, reply_words=40) as node:
        gateway = await serve([node.address], SOLLOL_REQUEST_TIMEOUT="2")
        async with aiohttp.ClientSession() as session, session.post(
                f"{gateway.url}/api/chat",
                json={"model": "llama3.2", "messages": HI, "stream": True}) as response:
            lines = [line async for line in response.content if line.strip()]
        assert response.status == 200 and 2 <= len(lines) < 40
        assert b"the request ran longer than 2 s" in lines[-1]
        assert await eventually(lambda: node.in_flight == 0)


@pytest.mark.parametrize("timeout", [None, 10.0])
async def test_a_callers_timeout_raises_the_first_chunk_limit(timeout: float | None) -> None:
    # The node takes 2 s before its first token (a model load); the first-token limit is 0.5 s.
    async with OllamaEmulator(name="loads", latency_s=2.0) as node:
        settings = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "ollama",
                                          "SOLLOL_FIRST_TOKEN_TIMEOUT": "0.5"})
        async with OllamaPool([node.address], settings=settings) as pool:
            if timeout is None:
                with pytest.raises(Exception, match=r"no first chunk within 0\.5 s"):
                    await pool.chat("llama3.2", HI)
            else:
                reply = await pool.chat("llama3.2", HI, timeout=timeout)
                assert reply["message"]["content"].startswith("loads")
                assert reply["_routing"]["attempts"] == 1


async def test_a_slow_reader_is_not_taken_for_a_silent_node() -> None:
    """Only time spent waiting on the node counts as its silence: a caller that takes longer
    than the silence limit over each chunk still gets the whole answer."""
    async with OllamaEmulator(name="quick", reply_words=4) as node:
        settings = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "ollama",
                                          "SOLLOL_SILENCE_TIMEOUT": "0.3"})
        async with OllamaPool([node.address], settings=settings) as pool:
            words = []
            async for chunk in await pool.chat("llama3.2", HI, stream=True):
                words.append(chunk["message"]["content"])
                await asyncio.sleep(0.6)  # twice the silence limit, on every chunk
        assert "".join(words) == "quick word1 word2 word3"
        assert node.in_flight == 0
