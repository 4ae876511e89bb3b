"""`sollol serve` in front of three emulated Ollama nodes, judged by the official, unmodified
`ollama` and `openai` Python clients."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import ollama
import openai
import pytest
from sollol_ollama.testing import DEFAULT_MODELS, EmulatedModel, EmulatorFleet, OllamaEmulator

from .conftest import free_port

SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"
LLAMA, MINILM = DEFAULT_MODELS
QWEN = EmulatedModel("qwen3:8b", family="qwen3", parameter_size="8.2B")
KEY = "team-key"


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, EmulatorFleet]]:
    fleet = EmulatorFleet([OllamaEmulator(name="node0", models=[LLAMA, MINILM]),
                           OllamaEmulator(name="node1", models=[LLAMA, QWEN], loaded=["qwen3:8b"]),
                           OllamaEmulator(name="node2", models=[MINILM])])
    port = free_port()
    async with fleet:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
        env.update(OLLAMA_NODES=",".join(fleet.addresses), SOLLOL_PORT=str(port),
                   SOLLOL_API_KEYS=KEY, SOLLOL_LOAD_PLUGINS="ollama")
        process = await asyncio.create_subprocess_exec(
            SOLLOL, "serve", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, process)
            yield url, fleet
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def wait_ready(url: str, process: asyncio.subprocess.Process) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(300):
            if process.returncode is not None:
                assert process.stderr is not None
                raise AssertionError(f"sollol serve exited: {await process.stderr.read()!r}")
            try:
                async with session.get(f"{url}/api/tags") as r:
                    if r.status == 200 and len((await r.json())["models"]) == 3:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("sollol serve never listed the fleet's models")


def ollama_client(url: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {KEY}"})


async def test_ollama_client_model_lists_are_the_fleets_union(
        served: tuple[str, EmulatorFleet]) -> None:
    url, fleet = served
    client = ollama_client(url)
    listed = (await client.list()).models
    assert sorted(m.model for m in listed) == ["all-minilm:latest", "llama3.2:latest",
                                               "qwen3:8b"]
    llama = next(m for m in listed if m.model == "llama3.2:latest")
    assert llama.details is not None and llama.details.family == "llama"
    running = (await client.ps()).models
    assert [m.model for m in running] == ["qwen3:8b"]
    shown = await client.show("qwen3:8b")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "qwen3"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session, \
            session.get(f"{url}/api/tags") as r:
        holders = {m["name"]: m["sollol_nodes"] for m in (await r.json())["models"]}
    assert sorted(holders["all-minilm:latest"]) == sorted([fleet[0].address, fleet[2].address])


async def test_ollama_client_chat_generate_and_embed(served: tuple[str, EmulatorFleet]) -> None:
    url, _ = served
    client = ollama_client(url)
    reply = await client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content.startswith("node1") and reply.done
    words = [part.message.content async for part in await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)]
    assert len(words) > 2 and words[0] in {"node0", "node1"}
    generated = await client.generate(model="llama3.2", prompt="hi", options={"num_predict": 3})
    assert generated.done_reason == "length" and len(generated.response.split()) == 3
    streamed = [p.response async for p in await client.generate(model="llama3.2", prompt="hi",
                                                                stream=True)]
    assert "".join(streamed).split()[0] in {"node0", "node1"}
    embedded = await client.embed(model="all-minilm", input=["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
    legacy = await client.embeddings(model="all-minilm", prompt="one")
    assert len(legacy.embedding) == 8


async def test_ollama_client_sees_errors_as_ollama_reports_them(
        served: tuple[str, EmulatorFleet]) -> None:
    url, _ = served
    with pytest.raises(ollama.ResponseError) as missing:
        await ollama_client(url).chat(model="ghost", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and "ghost" in missing.value.error
    with pytest.raises(ollama.ResponseError) as unauthorised:
        await ollama.AsyncClient(host=url).list()
    assert unauthorised.value.status_code == 401


async def test_openai_client_chat_completions_embeddings_models(
        served: tuple[str, EmulatorFleet]) -> None:
    url, _ = served
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY)
    raw = await client.chat.completions.with_raw_response.create(
        model="qwen3:8b", messages=[{"role": "user", "content": "hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("node1")
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-sollol-backend"].startswith("ollama://127.0.0.1:")
    stream = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.split()[0] in {"node0", "node1"}
    legacy = await client.completions.create(model="llama3.2", prompt="hi", max_tokens=2)
    assert len(legacy.choices[0].text.split()) == 2
    vectors = await client.embeddings.create(model="all-minilm", input=["a", "b"])
    assert [len(d.embedding) for d in vectors.data] == [8, 8]
    models = sorted(m.id for m in (await client.models.list()).data)
    assert models == ["all-minilm:latest", "llama3.2:latest", "qwen3:8b"]


async def test_openai_client_errors(served: tuple[str, EmulatorFleet]) -> None:
    url, _ = served
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="ghost",
                                             messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="llama3.2", messages=[])
    wrong = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
