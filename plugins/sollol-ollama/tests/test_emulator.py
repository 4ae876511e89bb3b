"""The Ollama emulator, judged by the official ``ollama`` client wherever it can express the call,
and by raw HTTP (aiohttp) for the rest: methods, statuses, framing and scripted failures."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import ollama
import pytest
from sollol_ollama.testing import (
    BUSY,
    EmulatedModel,
    EmulatorFleet,
    OllamaEmulator,
)

FAST = 20_000.0  # tokens/s: keeps the suite quick where pacing is not the point
REPLY = "emulator word1 word2 word3 word4 word5 word6 word7"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)$")
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")
HI = [{"role": "user", "content": "Hi there"}]


async def _settle() -> None:
    """Assert that nothing but the current task is left on the loop."""
    for _ in range(5):
        await asyncio.sleep(0)
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert left == []


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 3 s")


@pytest.fixture
async def emu() -> AsyncIterator[OllamaEmulator]:
    emulator = OllamaEmulator(tokens_per_s=FAST)
    try:
        async with emulator:
            yield emulator
    finally:
        await emulator.stop()
    await _settle()


@pytest.fixture
async def client(emu: OllamaEmulator) -> AsyncIterator[ollama.AsyncClient]:
    judge = ollama.AsyncClient(host=emu.url)
    try:
        yield judge
    finally:
        await judge.close()


async def _raw(method: str, url: str, body: bytes | str | None = None,
               **kwargs: Any) -> tuple[int, str, str]:
    """(status, content type header, text) of one request over a fresh connection."""
    async with aiohttp.ClientSession() as session, session.request(
            method, url, data=body, **kwargs) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def _post(url: str, body: Any) -> tuple[int, Any]:
    status, _, text = await _raw("POST", url, json.dumps(body))
    return status, json.loads(text)


# -- basics ---------------------------------------------------------------------------------
async def test_root_version_and_routing(emu: OllamaEmulator) -> None:
    assert emu.url == f"http://127.0.0.1:{emu.port}" and emu.port > 0
    assert emu.address == f"127.0.0.1:{emu.port}"
    status, ctype, text = await _raw("GET", emu.url + "/")
    assert (status, text) == (200, "Ollama is running")
    assert ctype.startswith("text/plain")
    status, ctype, text = await _raw("HEAD", emu.url + "/")
    assert (status, text) == (200, "")
    status, ctype, text = await _raw("GET", emu.url + "/api/version")
    assert (status, json.loads(text)) == (200, {"version": "0.33.0"})
    assert ctype.startswith("application/json")
    assert await _raw("GET", emu.url + "/api/nothing") == (
        404, "text/plain; charset=utf-8", "404 page not found")
    assert await _raw("GET", emu.url + "/api/chat") == (
        405, "text/plain; charset=utf-8", "405 method not allowed")
    assert (await _raw("POST", emu.url + "/api/tags"))[0] == 405


async def test_tags_and_show_through_the_client(
        emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    listing = await client.list()
    assert [m.model for m in listing.models] == ["llama3.2:latest", "all-minilm:latest"]
    llama = listing.models[0]
    assert llama.size == 2_019_393_189 and re.fullmatch(r"[0-9a-f]{64}", llama.digest or "")
    assert llama.details is not None and llama.details.family == "llama"
    assert llama.details.families == ["llama"] and llama.details.format == "gguf"
    assert listing.models[0].modified_at > listing.models[1].modified_at  # newest first
    _, _, text = await _raw("GET", emu.url + "/api/tags")
    raw = json.loads(text)["models"][1]
    assert raw["name"] == raw["model"] == "all-minilm:latest"
    assert raw["capabilities"] == ["embedding"] and raw["details"]["parent_model"] == ""
    assert RFC3339.match(raw["modified_at"])

    shown = await client.show("llama3.2")
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama" and info["llama.block_count"] == 28
    assert info["general.parameter_count"] == 3_200_000_000
    assert info["llama.context_length"] == 131072 and info["llama.embedding_length"] == 8
    assert shown.capabilities == ["completion", "tools"]
    assert shown.template and shown.modelfile and shown.parameters
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("nope")
    assert (missing.value.status_code, missing.value.error) == (
        404, "model 'nope:latest' not found")
    assert await _post(emu.url + "/api/show", {}) == (400, {"error": "model is required"})


async def test_ps_tracks_loads_keep_alive_and_unload(
        emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    assert (await client.ps()).models == []
    await client.chat(model="llama3.2", messages=HI, stream=False)
    (entry,) = (await client.ps()).models
    assert entry.model == "llama3.2:latest" and entry.size and entry.size_vram == entry.size
    assert entry.expires_at is not None and entry.expires_at.timestamp() > time.time() + 200
    assert entry.context_length == 4096 and entry.digest and entry.details
    assert emu.loaded == {"llama3.2:latest"}

    await client.embed(model="all-minilm", input="x", keep_alive=-1)
    names = [m.model for m in (await client.ps()).models]
    assert names == ["all-minilm:latest", "llama3.2:latest"]  # longest keep-alive first

    unload = await client.generate(model="llama3.2", prompt="", keep_alive=0)
    assert (unload.done, unload.done_reason, unload.response) == (True, "unload", "")
    assert emu.loaded == {"all-minilm:latest"}
    load = await client.chat(model="llama3.2", messages=[])
    assert (load.done_reason, load.message.content, load.message.role) == ("load", "", "assistant")
    assert "llama3.2:latest" in emu.loaded
    await client.generate(model="llama3.2", prompt="bye", keep_alive=0)
    assert "llama3.2:latest" not in emu.loaded


# -- chat and generate ------------------------------------------------------------------------
async def test_chat_non_streamed(emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    reply = await client.chat(model="llama3.2", messages=HI, stream=False)
    assert reply.model == "llama3.2"  # echoed as sent
    assert (reply.message.role, reply.message.content) == ("assistant", REPLY)
    assert (reply.done, reply.done_reason, reply.eval_count) == (True, "stop", 8)
    assert all(reply[m] > 0 for m in METRICS)
    assert reply.total_duration >= reply.eval_duration
    assert RFC3339.match(reply.created_at or "") and (reply.created_at or "").endswith("Z")
    assert emu.requests == [("/api/chat", {"model": "llama3.2", "messages": HI,
                                            "tools": [], "stream": False})]


async def test_chat_streamed(emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    parts = [p async for p in await client.chat(model="llama3.2", messages=HI, stream=True)]
    *words, final = parts
    assert [p.message.content for p in words] == REPLY.replace(" ", "\n ").split("\n")
    assert all(not p.done and p.done_reason is None and p.eval_count is None for p in words)
    assert (final.done, final.done_reason, final.message.content) == (True, "stop", "")
    assert final.eval_count == 8 and all(final[m] > 0 for m in METRICS)


def get_weather(city: str, days: int = 1) -> str:
    """Weather forecast.

    Args:
      city: The city
      days: How many days
    """
    return "sunny"


async def test_tool_calls(client: ollama.AsyncClient) -> None:
    reply = await client.chat(model="llama3.2", messages=HI, tools=[get_weather])
    assert reply.message.content == "" and reply.done_reason == "stop"
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "emulator", "days": 1}  # required ones, by type
    parts = [p async for p in await client.chat(
        model="llama3.2", messages=HI, tools=[get_weather], stream=True)]
    assert [bool(p.message.tool_calls) for p in parts] == [True, False]
    followup = [*HI, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    answer = await client.chat(model="llama3.2", messages=followup, tools=[get_weather])
    assert answer.message.content == REPLY and not answer.message.tool_calls


async def test_streaming_framing_on_the_wire(emu: OllamaEmulator) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            emu.url + "/api/generate", data='{"model":"llama3.2","prompt":"Hi"}',
            headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert response.headers["Transfer-Encoding"] == "chunked"
        lines = (await response.read()).decode().split("\n")
    assert lines[-1] == ""  # every object ends with a newline
    objects = [json.loads(line) for line in lines[:-1]]
    assert len(objects) == 9 and sum(o["done"] for o in objects) == 1
    assert set(objects[0]) == {"model", "created_at", "response", "done"}
    final = objects[-1]
    assert set(METRICS) <= set(final) and final["done_reason"] == "stop"
    assert final["response"] == "" and final["context"]
    assert "".join(o["response"] for o in objects) == REPLY


async def test_generate_streamed_and_not(client: ollama.AsyncClient) -> None:
    whole = await client.generate(model="llama3.2", prompt="Name a colour.")
    assert (whole.response, whole.done_reason, whole.eval_count) == (REPLY, "stop", 8)
    assert whole.context and whole.prompt_eval_count == 3
    stream = await client.generate(model="llama3.2:latest", prompt="Go", stream=True,
                                   options={"num_predict": 3})
    parts = [p async for p in stream]
    assert [p.response for p in parts] == ["emulator", " word1", " word2", ""]
    assert parts[-1].model == "llama3.2:latest"
    assert (parts[-1].done_reason, parts[-1].eval_count) == ("length", 3)
    (load,) = [p async for p in await client.generate(model="llama3.2", prompt="", stream=True)]
    assert (load.done, load.done_reason) == (True, "load")  # one object even when streaming


async def test_words_are_paced() -> None:
    async with OllamaEmulator(tokens_per_s=40.0, reply_words=6, latency_s=0.05) as node:
        judge = ollama.AsyncClient(host=node.url)
        started = time.perf_counter()
        arrivals = []
        async for _ in await judge.generate(model="llama3.2", prompt="p", stream=True):
            arrivals.append(time.perf_counter() - started)
        await judge.close()
    assert len(arrivals) == 7
    assert arrivals[0] >= 0.05 + 0.02  # latency, then one word's time
    assert arrivals[-1] >= 0.05 + 6 / 40 - 0.01
    assert arrivals[-2] - arrivals[0] >= 4 / 40 - 0.01  # chunks arrive as they are written


# -- embeddings -------------------------------------------------------------------------------
async def test_embed_and_legacy_embeddings(
        emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    reply = await client.embed(model="all-minilm", input=["first text", "second text"])
    assert reply.model == "all-minilm" and len(reply.embeddings) == 2
    for vector in reply.embeddings:
        assert len(vector) == 8 and math.isclose(sum(v * v for v in vector), 1.0)
    assert reply.embeddings[0] != reply.embeddings[1]
    again = await client.embed(model="all-minilm", input="first text")
    assert again.embeddings == [reply.embeddings[0]]  # deterministic
    assert reply.prompt_eval_count == 4 and reply.total_duration and reply.load_duration
    cut = await client.embed(model="all-minilm", input="first text", dimensions=3)
    assert len(cut.embeddings[0]) == 3
    assert math.isclose(sum(v * v for v in cut.embeddings[0]), 1.0)
    assert (await client.embed(model="all-minilm", input=[])).embeddings == []
    assert len((await client.embed(model="llama3.2", input="a")).embeddings[0]) == 8

    legacy = await client.embeddings(model="all-minilm", prompt="first text")
    norm = math.sqrt(sum(v * v for v in legacy.embedding))
    assert not math.isclose(norm, 1.0)
    assert [v / norm for v in legacy.embedding] == pytest.approx(reply.embeddings[0])
    assert (await client.embeddings(model="all-minilm", prompt="")).embedding == []
    assert await _post(emu.url + "/api/embed", {"model": "all-minilm", "input": 5}) == (
        400, {"error": "invalid input type"})
    assert await _post(emu.url + "/api/embed", {"model": "all-minilm", "input": ["a", 1]}) == (
        400, {"error": "invalid input type"})


# -- errors -------------------------------------------------------------------------------------
async def test_unknown_models_through_the_client(client: ollama.AsyncClient) -> None:
    cases = [
        (client.chat(model="foo", messages=HI), "model 'foo' not found"),
        (client.generate(model="foo", prompt="x"), "model 'foo' not found"),
        (client.embed(model="foo", input="x"), 'model "foo" not found, try pulling it first'),
        (client.embeddings(model="foo", prompt="x"), 'model "foo" not found, try pulling it first'),
    ]
    for call, message in cases:
        with pytest.raises(ollama.ResponseError) as caught:
            await call
        assert (caught.value.status_code, caught.value.error) == (404, message)
    with pytest.raises(ollama.ResponseError) as streamed:
        async for _ in await client.chat(model="foo", messages=HI, stream=True):
            pass
    assert streamed.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as chat_on_bert:
        await client.chat(model="all-minilm", messages=HI)
    assert (chat_on_bert.value.status_code, chat_on_bert.value.error) == (
        400, '"all-minilm" does not support chat')


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/chat", "", 400, "missing request body"),
    ("/api/embed", "  \n", 400, "missing request body"),
    ("/api/generate", None, 400, "missing request body"),
    ("/api/generate", "{}", 404, "model '' not found"),
    ("/api/embed", '{"input":"x"}', 404, "model '' not found"),
    ("/api/chat", '{"messages":[]}', 400, "model is required"),
    ("/api/embeddings", '{"prompt":"x"}', 400, "model is required"),
    ("/api/show", '{"model":""}', 400, "model is required"),
    ("/api/generate", '{"model":"bad name!"}', 400, "invalid model name"),
    ("/api/generate", '{"model":"llama3.2","prompt":"x","options":{"num_ctx":"big"}}',
     500, 'option "num_ctx" must be of type integer'),
    ("/api/generate", '{"model":"llama3.2","prompt":"x","top_logprobs":21}',
     400, "top_logprobs must be between 0 and 20"),
    ("/api/chat", '{"model":"llama3.2","messages":[],"think":true}',
     400, '"llama3.2" does not support thinking'),
])
async def test_error_table(emu: OllamaEmulator, path: str, body: str | None, status: int,
                           message: str) -> None:
    got, ctype, text = await _raw("POST", emu.url + path, body)
    assert (got, json.loads(text)) == (status, {"error": message})
    assert ctype.startswith("application/json")


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/chat", '{"model":"llama3.2","messages":[],"stream":"yes"}', "stream"),
    ("/api/generate", '{"model":5}', "model"),
    ("/api/generate", '{"model":"llama3.2","options":[]}', "options"),
    ("/api/chat", '{"model":"llama3.2","messages":[{"role":"user","content":7}]}', "content"),
    ("/api/embed", '{"model":"all-minilm","input":"x","dimensions":1.5}', "dimensions"),
    ("/api/generate", '{"model":"llama3.2","keep_alive":true}', "keep_alive"),
])
async def test_wrong_field_types(emu: OllamaEmulator, path: str, body: str, field: str) -> None:
    status, _, text = await _raw("POST", emu.url + path, body)
    assert status == 400 and field in json.loads(text)["error"]
    assert emu.requests == [] or emu.requests[-1][0] == path


async def test_malformed_json_and_unknown_keys(emu: OllamaEmulator) -> None:
    status, _, text = await _raw("POST", emu.url + "/api/chat", "{nope")
    assert status == 400 and "invalid character" in json.loads(text)["error"]
    status, _, text = await _raw("POST", emu.url + "/api/chat", '{"model":"llama3.2"')
    assert status == 400 and json.loads(text)["error"]
    status, _, text = await _raw("POST", emu.url + "/api/chat", "[1]")
    assert status == 400 and "cannot unmarshal array" in json.loads(text)["error"]
    status, body = await _post(emu.url + "/api/chat", {
        "model": "llama3.2", "messages": HI, "stream": False, "whatever": {"x": 1},
        "options": {"unknown_option": 1, "temperature": 0}})
    assert status == 200 and body["message"]["content"] == REPLY


# -- concurrency -------------------------------------------------------------------------------
async def test_queue_overflow_is_503() -> None:
    async with OllamaEmulator(parallel=1, max_queue=1, tokens_per_s=20.0, reply_words=4) as node:
        body = {"model": "llama3.2", "prompt": "slow", "stream": False}
        first = asyncio.ensure_future(_post(node.url + "/api/generate", body))
        await _until(lambda: node.in_flight == 1)
        second = asyncio.ensure_future(_post(node.url + "/api/generate", body))
        await _until(lambda: node.pending == 1)
        third = await _post(node.url + "/api/generate", body)  # refused while 1 runs, 1 waits
        assert node.in_flight == 2
        replies = [await first, await second, third]
    assert [status for status, _ in replies] == [200, 200, 503]
    assert replies[2][1] == {"error": BUSY}
    assert BUSY == "server busy, please try again.  maximum pending requests exceeded"
    assert node.max_in_flight == 3 and node.in_flight == 0


async def test_parallel_slots_overlap() -> None:
    async with OllamaEmulator(parallel=2, tokens_per_s=50.0, reply_words=5) as node:
        judge = ollama.AsyncClient(host=node.url)
        started = time.perf_counter()
        replies = await asyncio.gather(*(
            judge.generate(model="llama3.2", prompt="x") for _ in range(4)))
        elapsed = time.perf_counter() - started
        await judge.close()
    assert all(r.response.startswith("emulator") for r in replies)
    assert 0.2 <= elapsed < 0.38  # two rounds of 5 words at 50/s, not four
    assert node.max_in_flight == 4


async def test_client_going_away_frees_the_slot() -> None:
    async with OllamaEmulator(tokens_per_s=20.0, reply_words=40) as node:
        async with aiohttp.ClientSession() as session, session.post(
                node.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}) as resp:
            first = json.loads(await resp.content.readline())
            assert first["response"] == "emulator" and node.in_flight == 1
        await _until(lambda: node.in_flight == 0)
        node.tokens_per_s = FAST
        assert (await _post(node.url + "/api/generate", {
            "model": "llama3.2", "prompt": "x", "stream": False}))[0] == 200
        streaming = asyncio.ensure_future(_raw(
            "POST", node.url + "/api/chat", json.dumps({"model": "llama3.2", "messages": HI})))
        node.tokens_per_s = 1.0
        await _until(lambda: node.in_flight == 1)
    with pytest.raises(aiohttp.ClientPayloadError):  # stop() cut the stream
        await streaming
    await _settle()


async def test_host_guard_when_asked() -> None:
    async with OllamaEmulator(check_host=True) as node:
        assert (await _raw("GET", node.url + "/"))[0] == 200
        for host, status in [("evil.example", 403), ("localhost:11434", 200),
                             ("10.1.2.3", 200), ("box.internal", 200)]:
            got, _, _ = await _raw("GET", node.url + "/api/version", headers={"Host": host})
            assert got == status, host


# -- scripted failures ---------------------------------------------------------------------------
async def test_refuse_and_error500(emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    emu.fail_next("refuse")
    with pytest.raises(aiohttp.ClientConnectionError):
        await _raw("POST", emu.url + "/api/chat", json.dumps(
            {"model": "llama3.2", "messages": HI}))
    emu.fail_next("error500", count=2)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as caught:
            await client.embed(model="all-minilm", input="x")
        assert (caught.value.status_code, caught.value.error) == (500, "emulated failure")
    assert (await client.embed(model="all-minilm", input="x")).embeddings
    assert [path for path, _ in emu.requests] == ["/api/chat"] + ["/api/embed"] * 3
    with pytest.raises(ValueError, match="unknown failure kind"):
        emu.fail_next("explode")  # type: ignore[arg-type]


async def test_hang_times_out_the_client_and_ends_with_stop() -> None:
    node = OllamaEmulator(tokens_per_s=FAST)
    await node.start()
    try:
        node.fail_next("hang", count=2)
        timeout = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(TimeoutError):
            await _raw("POST", node.url + "/api/generate",
                       '{"model":"llama3.2","prompt":"x"}', timeout=timeout)
        waiting = asyncio.ensure_future(_raw("POST", node.url + "/api/chat", json.dumps(
            {"model": "llama3.2", "messages": HI})))
        await asyncio.sleep(0.05)
        await _until(lambda: node.in_flight == 1)  # the timed-out one ended; the second hangs
        started = time.perf_counter()
        await node.stop()
        assert time.perf_counter() - started < 1.0
        with pytest.raises(aiohttp.ClientConnectionError):
            await waiting
    finally:
        await node.stop()
    await _settle()


async def test_die_midstream(emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    emu.fail_next("die_midstream")
    seen: list[ollama.ChatResponse] = []
    with pytest.raises(httpx.HTTPError):
        async for part in await client.chat(model="llama3.2", messages=HI, stream=True):
            seen.append(part)
    assert 0 < len(seen) < 8 and not any(p.done for p in seen)
    emu.fail_next("die_midstream")
    with pytest.raises(aiohttp.ClientPayloadError):
        await _raw("POST", emu.url + "/api/generate",
                   '{"model":"llama3.2","prompt":"x","stream":false}')
    emu.fail_next("die_midstream")
    with pytest.raises(httpx.HTTPError):
        await client.embed(model="all-minilm", input="x")
    assert (await client.chat(model="llama3.2", messages=HI)).message.content == REPLY


async def test_error_midstream(emu: OllamaEmulator, client: ollama.AsyncClient) -> None:
    emu.fail_next("error_midstream")
    seen: list[ollama.GenerateResponse] = []
    with pytest.raises(ollama.ResponseError, match="emulated failure"):
        async for part in await client.generate(model="llama3.2", prompt="x", stream=True):
            seen.append(part)
    assert 0 < len(seen) < 8 and not any(p.done for p in seen)
    emu.fail_next("error_midstream")
    assert await _post(emu.url + "/api/generate", {
        "model": "llama3.2", "prompt": "x", "stream": False}) == (
        500, {"error": "emulated failure"})


async def test_stop_refuses_then_restart_on_the_same_port() -> None:
    node = OllamaEmulator(name="phoenix", tokens_per_s=FAST, loaded=["llama3.2"])
    try:
        async with node:
            port = node.port
            assert node.loaded == {"llama3.2:latest"}
        with pytest.raises(aiohttp.ClientConnectionError):
            await _raw("GET", node.url + "/")
        async with node:
            assert node.port == port and node.loaded == set()
            with ollama.Client(host=node.url) as judge:  # the synchronous client, in a thread
                reply = await asyncio.to_thread(judge.chat, model="llama3.2", messages=HI)
            assert reply.message.content.startswith("phoenix ")
    finally:
        await node.stop()
    await _settle()


# -- fleets ---------------------------------------------------------------------------------------
async def test_fleet_of_three_answers_with_own_names() -> None:
    custom = EmulatedModel("tiny", capabilities=("completion",))
    assert custom.name == "tiny:latest"
    async with EmulatorFleet.of(3, tokens_per_s=FAST, models=[custom]) as fleet:
        assert len(set(fleet.addresses)) == 3
        for index, node in enumerate(fleet.emulators):
            assert fleet[index] is node and node.name == f"node{index}"
            judge = ollama.AsyncClient(host=node.address)
            reply = await judge.generate(model="tiny", prompt="who?")
            listing = await judge.list()
            await judge.close()
            assert reply.response.split()[0] == f"node{index}"
            assert [m.model for m in listing.models] == ["tiny:latest"]
        judge = ollama.AsyncClient(host=fleet[0].url)
        with pytest.raises(ollama.ResponseError) as caught:
            await judge.chat(model="tiny", messages=HI, tools=[get_weather])
        await judge.close()
        assert (caught.value.status_code, caught.value.error) == (
            400, "registry.ollama.ai/library/tiny:latest does not support tools")
    await _settle()
