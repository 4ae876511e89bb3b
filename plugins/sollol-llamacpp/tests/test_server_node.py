"""A plain llama-server as a whole-model node: discovered from config, probed, and served through
the gateway to the official ollama and openai clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import ollama
import openai
import pytest
from aiohttp import web
from sollol_llamacpp.binaries import Binaries

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.router import Router
from sollol_core.types import Health, Role

MODEL = "gemma3:270m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def llama_node(binaries: Binaries, gemma: Path,
                     tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [str(binaries.llama_server), "-m", str(gemma), "-a", MODEL, "--host", "127.0.0.1",
         "--port", str(port), "-c", "1024", "-np", "2"],
        stdout=(tmp_path / "node.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                assert process.poll() is None, (tmp_path / "node.log").read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def gateway(node: str) -> AsyncIterator[tuple[str, Router]]:
    settings = Settings.load(environ={"SOLLOL_LLAMACPP_SERVERS": node,
                                      "SOLLOL_LOAD_PLUGINS": "llamacpp"})
    router = Router.create(settings)
    runner = web.AppRunner(create_app(router))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", router
    finally:
        await runner.cleanup()


async def test_llama_server_node_is_probed_and_serves_both_apis(llama_node: str) -> None:
    async with gateway(llama_node) as (url, router):
        (node,) = router.fleet.snapshot().nodes
        assert node.endpoint.kind == "llamacpp" and node.role is Role.NODE
        assert node.health is Health.UP and node.holds(MODEL) and node.parallel == 2
        assert node.slots_source == "node"  # its /props total_slots

        client = ollama.AsyncClient(host=url)
        reply = await client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                  options={"temperature": 0, "num_predict": 8})
        assert reply.done and reply.message.content and (reply.eval_count or 0) > 0
        parts = [p.response async for p in await client.generate(
            model=MODEL, prompt="Count: one, two,", stream=True,
            options={"temperature": 0, "num_predict": 6})]
        assert len(parts) > 1 and "".join(parts).strip()

        chat = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
        raw = await chat.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
            temperature=0)
        assert raw.headers["x-sollol-backend"] == f"llamacpp://{llama_node}"
        assert raw.parse().choices[0].message.content
        stream = await chat.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
            stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def test_a_big_model_is_sharded_even_if_a_node_holds_it_but_embeddings_stay_whole(
        llama_node: str, gemma: Path, shared_workers: list[str]) -> None:
    from attrs import evolve
    from sollol_llamacpp.plugin import LlamacppPlugin
    from sollol_llamacpp.settings import LlamacppSettings

    from sollol_core.types import InferenceRequest

    base = Settings.load(environ={"SOLLOL_LLAMACPP_SERVERS": llama_node,
                                  "RPC_BACKENDS": ",".join(shared_workers[:2]),
                                  "SOLLOL_LOAD_PLUGINS": "llamacpp",
                                  "SOLLOL_DISTRIBUTED_THRESHOLD_PARAMS": "0.1"})
    settings = base.with_sections(evolve(base.section(LlamacppSettings),
                                         models={MODEL: str(gemma)}, context_size=1024,
                                         parallel=1))
    router = Router.create(settings)
    plugin = router.plugins.get(LlamacppPlugin)
    assert plugin is not None
    await router.start()
    try:
        for _ in range(600):
            if plugin.footprints:
                break
            await asyncio.sleep(0.05)
        chat = router.decide(InferenceRequest.chat(MODEL, []))
        embed = router.decide(InferenceRequest.embed(MODEL, "x"))
    finally:
        await router.stop()
    assert chat.plan is not None
    assert "parameters is over the distributed_threshold_params of 0.1B" in chat.reason
    assert embed.target is not None and embed.target.kind == "llamacpp"
