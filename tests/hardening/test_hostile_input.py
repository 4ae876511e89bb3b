"""Hostile input through a real ``sollol serve``: huge and deep bodies, odd priorities and
headers, and web pages of other sites. Every refusal is an API-shaped error, and the gateway
keeps answering everyone else meanwhile."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import pytest
from sollol_ollama.testing import OllamaEmulator

HI = [{"role": "user", "content": "hi"}]
JSON_TYPE = {"Content-Type": "application/json"}


async def post(url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
               ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(
            url, data=data, headers={**JSON_TYPE, **(headers or {})}) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None, response.headers


async def health_while(url: str, work: Any) -> tuple[Any, float]:
    """Run ``work`` and meanwhile ask ``/health`` every 50 ms; the slowest answer's seconds."""
    slowest = 0.0
    task = asyncio.ensure_future(work)
    async with aiohttp.ClientSession() as session:
        while not task.done():
            started = time.monotonic()
            async with session.get(f"{url}/health") as response:
                assert response.status == 200
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.05)
    return await task, slowest


@pytest.fixture
async def gateway(serve: Any) -> Any:
    async with OllamaEmulator(name="node") as node:
        yield await serve([node.address], SOLLOL_API_KEYS="k1")


KEY = {"Authorization": "Bearer k1"}


async def test_huge_arrays_are_refused_without_stalling_the_gateway(gateway: Any) -> None:
    context = b'{"model":"llama3.2","prompt":"hi","context":[' + b",".join(
        [b"0"] * 15_000_000) + b"]}"  # 30 MB
    messages = b'{"model":"llama3.2","messages":[' + b",".join(
        [b"{}"] * 8_000_000) + b"]}"
    for path, body in (("/api/generate", context), ("/api/chat", messages),
                       ("/v1/chat/completions", messages)):
        (status, reply, _), slowest = await health_while(
            gateway.url, post(f"{gateway.url}{path}", body, KEY))
        assert status == 413
        message = reply["error"]["message"] if path.startswith("/v1/") else reply["error"]
        assert "more than 1000000 JSON values" in message
        assert slowest < 2.0, f"/health waited {slowest:.1f} s behind one request body"


async def test_a_large_array_within_the_limit_is_checked_quickly_and_served(
        gateway: Any) -> None:
    body = {"model": "llama3.2", "prompt": "hi", "stream": False,
            "context": list(range(900_000))}
    (status, reply, _), slowest = await health_while(
        gateway.url, post(f"{gateway.url}/api/generate", body, KEY))
    assert status == 200 and reply["done"] is True
    assert slowest < 2.0
    body["context"][-1] = "x"
    status, reply, _ = await post(f"{gateway.url}/api/generate", body, KEY)
    assert status == 400 and "item 899999: expected an integer" in reply["error"]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_deeply_nested_json_is_a_400_in_the_apis_shape(gateway: Any, path: str) -> None:
    status, reply, _ = await post(f"{gateway.url}{path}", b"[" * 100_000 + b"]" * 100_000, KEY)
    assert status == 400
    message = reply["error"]["message"] if path.startswith("/v1/") else reply["error"]
    assert "nested too deeply" in message


@pytest.mark.parametrize("priority", ["--5", "²", "5 5", "1e3", "-5", "99999999999999999999"])
async def test_odd_priorities_are_a_400(gateway: Any, priority: str) -> None:
    body = {"model": "llama3.2", "messages": HI, "stream": False}
    for headers, sent in (({"X-Sollol-Priority": priority}, body),
                          ({}, {**body, "priority": priority})):
        status, reply, _ = await post(f"{gateway.url}/api/chat", sent, {**KEY, **headers})
        assert status == 400 and "priority must be an integer from 1 to 10" in reply["error"]


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes no HTTP client library would, and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_non_ascii_authorization_header_is_a_401(gateway: Any) -> None:
    answer = await asyncio.to_thread(raw_request, gateway.port, (
        b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\xc3\x28 k\xe9y\r\n\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401")
    assert "API key" in json.loads(body)["error"]


@pytest.mark.parametrize("model", ["a\u0000b", "a\r\nX-Evil: 1", "\u00e9\u4e2d\u202e", "a" * 5000])
async def test_nothing_in_a_model_name_breaks_a_response_header(gateway: Any,
                                                                model: str) -> None:
    body = {"model": model, "messages": HI, "stream": False}
    status, reply, headers = await post(f"{gateway.url}/api/chat", body, KEY)
    assert status in (400, 404) and "error" in reply
    assert "X-Evil" not in headers
    for value in headers.values():
        assert value.isprintable() and value.isascii()


async def test_web_pages_of_other_sites_cannot_use_the_gateway(serve: Any) -> None:
    async with OllamaEmulator(name="node") as node:
        gateway = await serve([node.address])  # no API keys: its loopback default
        body = json.dumps({"model": "llama3.2", "messages": HI, "stream": False}).encode()
        # a cross-site form post from a page (no preflight): refused before it runs
        status, reply, _ = await post(f"{gateway.url}/api/chat", body, {
            "Origin": "https://evil.example", "Content-Type": "text/plain"})
        assert status == 403 and "evil.example" in reply["error"]
        # the same without Origin (a browser that hid it) still cannot send text/plain
        status, reply, _ = await post(f"{gateway.url}/api/chat", body,
                                      {"Content-Type": "text/plain", "Sec-Fetch-Mode": "no-cors"})
        assert status == 415
        # DNS rebinding: a name that resolves to 127.0.0.1 but is not this machine's
        status, reply, _ = await post(f"{gateway.url}/v1/chat/completions", body,
                                      {"Host": f"evil.example:{gateway.port}"})
        assert status == 403 and reply["error"]["type"] == "permission_error"
        assert node.requests == []  # nothing reached the node
        # a page on localhost may, with CORS; and curl's form-encoded -d still works
        async with aiohttp.ClientSession() as session:
            async with session.options(f"{gateway.url}/api/chat", headers={
                    "Origin": "http://localhost:3000",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type"}) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        status, reply, headers = await post(f"{gateway.url}/api/chat", body,
                                            {"Origin": "http://localhost:3000"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        status, reply, _ = await post(f"{gateway.url}/api/chat", body, {
            "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and reply["done"] is True


async def test_an_allowed_origin_and_host_are_configurable(serve: Any) -> None:
    async with OllamaEmulator(name="node") as node:
        gateway = await serve([node.address], SOLLOL_ORIGINS="https://chat.example.com",
                              SOLLOL_ALLOWED_HOSTS="sollol.lan")
        body = {"model": "llama3.2", "messages": HI, "stream": False}
        status, _, _ = await post(f"{gateway.url}/api/chat", body,
                                  {"Origin": "https://chat.example.com"})
        assert status == 200
        status, _, _ = await post(f"{gateway.url}/api/chat", body,
                                  {"Host": f"sollol.lan:{gateway.port}"})
        assert status == 200
