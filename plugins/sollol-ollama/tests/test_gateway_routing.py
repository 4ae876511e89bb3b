"""The gateway routing over a fleet of Ollama emulators: spreading load, fail-over, streams that
break, priority queueing, circuits, and bad input. Judged over HTTP as a client sees it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from sollol_ollama.testing import EmulatorFleet, OllamaEmulator

from .conftest import gateway

SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}

JSON_TYPE = {"Content-Type": "application/json"}


async def post(url: str, body: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body, **kwargs) as r:
        text = await r.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return r.status, dict(r.headers), parsed


async def wait_for_models(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{url}/api/tags") as r:
                if (await r.json())["models"]:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("the gateway never listed a model")


async def test_concurrent_requests_spread_over_the_fleet_and_say_where_they_ran() -> None:
    async with EmulatorFleet.of(3, tokens_per_s=200) as fleet, \
            gateway(fleet.addresses) as (url, _):
        await wait_for_models(url)
        replies = await asyncio.gather(*(post(f"{url}/api/chat", CHAT) for _ in range(6)))
    assert {status for status, _, _ in replies} == {200}
    answered_by = [body["message"]["content"].split()[0] for _, _, body in replies]
    assert set(answered_by) == {"node0", "node1", "node2"}
    for _, headers, body in replies:
        node = next(e for e in fleet if e.name == body["message"]["content"].split()[0])
        assert headers["X-Sollol-Backend"] == f"ollama://{node.address}"
        assert "holding the model" in headers["X-Sollol-Reason"]
        assert len(headers["X-Sollol-Request-Id"]) == 32


@pytest.mark.parametrize("failure", ["refuse", "error500", "hang"])
async def test_failure_before_the_first_byte_fails_over_to_another_node(failure: str) -> None:
    # node0 has the model in memory, so placement tries it first
    preferred, other = OllamaEmulator(name="node0", loaded=["llama3.2"]), OllamaEmulator()
    async with EmulatorFleet([preferred, other]), \
            gateway([preferred.address, other.address],
                    SOLLOL_FIRST_TOKEN_TIMEOUT="1") as (url, _):
        await wait_for_models(url)
        preferred.fail_next(failure)  # type: ignore[arg-type]
        status, headers, body = await post(f"{url}/api/chat", CHAT)
    assert status == 200, body
    assert headers["X-Sollol-Attempts"] == "2"
    assert headers["X-Sollol-Backend"] == f"ollama://{other.address}"
    assert body["message"]["content"].startswith("emulator")
    assert len(preferred.requests) == 1 and len(other.requests) == 1  # never one node twice


async def test_when_every_node_fails_the_error_names_each_attempt() -> None:
    async with EmulatorFleet.of(2) as fleet, gateway(fleet.addresses) as (url, _):
        await wait_for_models(url)
        for node in fleet:
            node.fail_next("error500", count=5)
        status, _, body = await post(f"{url}/api/chat", CHAT)
    assert status == 502
    assert set(body) == {"error"}
    assert fleet[0].address in body["error"] and fleet[1].address in body["error"]


@pytest.mark.parametrize("failure", ["die_midstream", "error_midstream"])
async def test_failure_after_the_first_byte_ends_the_stream_with_an_error_line(
        failure: str) -> None:
    async with OllamaEmulator(reply_words=20, tokens_per_s=200) as node, \
            gateway([node.address]) as (url, _):
        await wait_for_models(url)
        node.fail_next(failure)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session, \
                session.post(f"{url}/api/generate", json={"model": "llama3.2", "prompt": "x"}) \
                as response:
            lines = [json.loads(line) async for line in response.content if line.strip()]
    assert response.status == 200
    assert lines[0]["done"] is False
    assert "error" in lines[-1] and not any(line.get("done") for line in lines)


async def test_streaming_is_relayed_chunk_by_chunk_not_buffered() -> None:
    async with OllamaEmulator(reply_words=6, tokens_per_s=5) as node, \
            gateway([node.address]) as (url, _):
        await wait_for_models(url)
        arrivals = []
        started = time.monotonic()
        client = ollama.AsyncClient(host=url)
        async for part in await client.generate(model="llama3.2", prompt="x", stream=True):
            arrivals.append((time.monotonic() - started, part.response))
    # 6 words at 5 words/s: the first arrives long before the last, as the node sent it
    assert arrivals[0][0] < arrivals[-1][0] - 0.6
    assert "".join(text for _, text in arrivals).split()[0] == "emulator"


async def test_busy_fleet_queues_by_priority_and_reports_queue_time() -> None:
    async with OllamaEmulator(reply_words=4, tokens_per_s=20) as node, \
            gateway([node.address], SOLLOL_PRIORITY_AGING="0.01") as (url, _):
        await wait_for_models(url)
        finished: list[str] = []

        async def ask(name: str, priority: int, delay: float) -> dict[str, str]:
            await asyncio.sleep(delay)
            status, headers, _ = await post(f"{url}/api/chat", {**CHAT, "priority": priority})
            assert status == 200
            finished.append(name)
            return headers

        results = await asyncio.gather(ask("first", 5, 0), ask("low", 1, 0.05),
                                       ask("high", 9, 0.1), ask("normal", 5, 0.15))
    assert finished == ["first", "high", "normal", "low"]
    assert float(results[1]["X-Sollol-Queue-Ms"]) > 100  # "low" waited for three others
    assert node.max_in_flight == 1  # the node never got more than it can serve


async def test_full_queue_answers_503_with_retry_after() -> None:
    async with OllamaEmulator(reply_words=10, tokens_per_s=20) as node, \
            gateway([node.address], SOLLOL_QUEUE_SIZE="1") as (url, _):
        await wait_for_models(url)
        replies = await asyncio.gather(*(post(f"{url}/api/chat", CHAT) for _ in range(4)))
    statuses = sorted(status for status, _, _ in replies)
    assert statuses == [200, 200, 503, 503]
    _, headers, body = next(r for r in replies if r[0] == 503)
    assert body == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    assert int(headers["Retry-After"]) >= 1


async def test_a_failing_node_opens_its_circuit_and_status_shows_it() -> None:
    # node0 holds the model in memory, so placement keeps preferring it until its circuit opens
    fleet = EmulatorFleet([OllamaEmulator(name="node0", loaded=["llama3.2"]), OllamaEmulator()])
    async with fleet, gateway(fleet.addresses) as (url, _):
        await wait_for_models(url)
        fleet[0].fail_next("error500", count=100)
        for _ in range(8):
            status, _, _ = await post(f"{url}/api/chat", CHAT)
            assert status == 200
        async with aiohttp.ClientSession() as session, \
                session.get(f"{url}/api/sollol/status") as r:
            circuits = {c["node"]: c for c in (await r.json())["circuits"]}
        shown = await asyncio.create_subprocess_exec(
            SOLLOL, "status", "--url", url, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"})
        table = (await shown.communicate())[0].decode()
    assert shown.returncode == 0
    row = next(line for line in table.splitlines() if f"ollama://{fleet[0].address}" in line
               and "100%" in line)
    assert "open" in row
    bad = circuits[f"ollama://{fleet[0].address}"]
    assert bad["state"] == "open" and bad["failure_ratio"] == 1.0
    assert bad["next_retry_at"] is not None
    assert circuits[f"ollama://{fleet[1].address}"]["state"] == "closed"
    assert len(fleet[0].requests) == 4  # opened after 4 failures; nothing sent to it since


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/chat", b"", 400, "missing request body"),
    ("/api/chat", b"{not json", 400, "invalid JSON"),
    ("/api/chat", b"[1, 2]", 400, "expected a JSON object"),
    ("/api/chat", b'{"messages": []}', 400, "model is required"),
    ("/api/generate", b'{"prompt": "x"}', 404, "model '' not found"),
    ("/api/chat", b'{"model": 5}', 400, "invalid field 'model': expected a string"),
    ("/api/generate", b'{"model": "llama3.2", "stream": "yes"}', 400, "invalid field 'stream'"),
    ("/api/chat", b'{"model": "ghost", "messages": []}', 404, "model 'ghost' not found"),
    ("/api/embed", b'{"model": "ghost", "input": "x"}', 404,
     'model "ghost" not found, try pulling it first'),
    ("/api/chat", b'{"model": "llama3.2", "priority": 11}', 400, "priority must be"),
])
async def test_bad_input_gets_ollamas_error_shape(path: str, body: bytes, status: int,
                                                  message: str) -> None:
    async with OllamaEmulator() as node, gateway([node.address]) as (url, _):
        await wait_for_models(url)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}{path}", data=body, headers=JSON_TYPE) as r:
                got = await r.json()
                assert r.status == status
                assert set(got) == {"error"} and message in got["error"]
            async with session.get(f"{url}/api/version") as r:
                assert r.status == 200  # and the gateway is still up


async def test_oversized_body_unknown_path_and_wrong_method() -> None:
    async with OllamaEmulator() as node, \
            gateway([node.address], SOLLOL_MAX_BODY_BYTES="1000") as (url, _):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/api/chat", data=b"x" * 5000, headers=JSON_TYPE) as r:
                assert r.status == 413 and "1000 bytes" in (await r.json())["error"]
            async with session.get(f"{url}/api/nothing") as r:
                assert (r.status, await r.text()) == (404, "404 page not found")
            async with session.get(f"{url}/api/chat") as r:
                assert (r.status, await r.text()) == (405, "405 method not allowed")
            async with session.get(f"{url}/v1/nothing") as r:
                assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"


async def test_request_fields_reach_the_node_untouched_and_its_fields_come_back() -> None:
    body = {"model": "llama3.2", "stream": False, "keep_alive": "10m", "think": False,
            "format": {"type": "object"}, "options": {"temperature": 0, "num_ctx": 2048},
            "messages": [{"role": "user", "content": "hi", "images": ["aGVsbG8="]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "some_future_field": [1, 2]}
    async with OllamaEmulator() as node, gateway([node.address]) as (url, _):
        await wait_for_models(url)
        status, _, reply = await post(f"{url}/api/chat", {**body, "priority": 7})
    assert status == 200
    path, received = node.requests[-1]
    # priority is SOLLOL's, not the node's; the node streams (so that SOLLOL sees it is alive)
    assert path == "/api/chat" and received == {**body, "stream": True}
    assert {"total_duration", "eval_count", "done_reason", "created_at"} <= set(reply)
    # ... and the client still gets Ollama's one non-streamed answer, whole
    assert reply["done"] is True and reply["message"]["tool_calls"][0]["function"]["name"] == "f"
