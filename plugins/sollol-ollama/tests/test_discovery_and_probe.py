"""Discovery and health of Ollama nodes, against emulators and things that are not Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from sollol_ollama.discovery import Discovery, from_ollama_host
from sollol_ollama.probe import Prober
from sollol_ollama.testing import OllamaEmulator

from sollol_core.config import Settings
from sollol_core.types import Endpoint, Health

from .conftest import free_port


@pytest.mark.parametrize(("value", "expected"), [
    ("", None),
    ("10.0.0.5", "10.0.0.5:11434"),
    ("10.0.0.5:9999", "10.0.0.5:9999"),
    (":11500", "127.0.0.1:11500"),
    ("0.0.0.0", "127.0.0.1:11434"),
    ("http://gpu-box", "gpu-box:80"),
    ("https://gpu-box", "gpu-box:443"),
    ("http://gpu-box:8000/", "gpu-box:8000"),
    ("'[::1]:11434'", "[::1]:11434"),
    ("gpu-box:port", None),
])
def test_ollama_host_is_read_as_ollama_clients_read_it(value: str, expected: str | None) -> None:
    assert from_ollama_host(value) == expected


@contextlib.asynccontextmanager
async def not_ollama(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """An HTTP server that is not Ollama: every path is 404."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    port = port or free_port(host)
    await web.TCPSite(runner, host, port).start()
    try:
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


async def discover(settings: Settings, environ: dict[str, str],
                   localhost: str | None = None) -> dict[str, str]:
    """Discovery's finds (address -> source); ``localhost`` stands in for 127.0.0.1:11434."""
    discovery = Discovery() if localhost is None else Discovery(localhost=localhost)
    async with aiohttp.ClientSession() as session:
        found = await discovery.discover(session, settings, environ)
    return {e.address: e.source for e in found}


async def test_named_nodes_are_kept_even_when_down_but_implicit_ones_must_answer() -> None:
    down = f"127.0.0.1:{free_port()}"
    async with OllamaEmulator() as node, not_ollama() as other:
        settings = Settings.load(environ={"OLLAMA_NODES": f"{down},{node.address}",
                                          "SOLLOL_IMPLICIT_NODES": "true"})
        found = await discover(settings, {"OLLAMA_HOST": other}, localhost=other)
        assert found[down] == "config" and found[node.address] == "config"
        assert other not in found  # answers HTTP, but not Ollama's API
        found = await discover(Settings(), {"OLLAMA_HOST": node.address})
        assert found[node.address] == "OLLAMA_HOST"


@pytest.mark.parametrize(("environ", "implicit_found"), [
    ({"OLLAMA_NODES": "{named}"}, False),
    ({"OLLAMA_NODES": "{named}", "SOLLOL_IMPLICIT_NODES": "true"}, True),
    ({}, True),
    ({"SOLLOL_IMPLICIT_NODES": "false"}, False),
], ids=["list-configured", "list-and-opt-in", "no-list-auto", "no-list-never"])
async def test_ollama_host_and_localhost_join_only_without_a_node_list_or_by_opt_in(
        environ: dict[str, str], implicit_found: bool) -> None:
    async with (OllamaEmulator(name="named") as named,
                OllamaEmulator(name="ollama-host") as via_env,
                OllamaEmulator(name="localhost") as local):
        settings = Settings.load(environ={k: v.format(named=named.address)
                                          for k, v in environ.items()})
        found = await discover(settings, {"OLLAMA_HOST": via_env.address},
                               localhost=local.address)
    implicit = {via_env.address: "OLLAMA_HOST", local.address: "localhost"}
    named_found = {named.address: "config"} if "OLLAMA_NODES" in environ else {}
    assert found == {**named_found, **(implicit if implicit_found else {})}


@contextlib.asynccontextmanager
async def bare_tcp(host: str, port: int) -> AsyncIterator[None]:
    """Accepts connections and says nothing: an open port that is not an Ollama."""
    server = await asyncio.start_server(lambda r, w: None, host, port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def port_free_on(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def test_subnet_sweep_finds_only_hosts_that_answer_ollama() -> None:
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    if not all(port_free_on(h, 11434) for h in hosts):
        pytest.fail("port 11434 is taken on a 127.0.0.x address; the sweep test needs it")
    async with (OllamaEmulator(name="a", host=hosts[0], port=11434),
                OllamaEmulator(name="b", host=hosts[1], port=11434),
                not_ollama(hosts[2], 11434), bare_tcp(hosts[3], 11434)):
        settings = Settings.load(environ={"SOLLOL_SUBNETS": "127.0.0.0/29",
                                          "SOLLOL_DISCOVERY_TIMEOUT": "0.5"})
        found = await discover(settings, {})
    swept = sorted(a for a, source in found.items() if source == "network")
    assert swept == ["127.0.0.2:11434", "127.0.0.3:11434"]


async def probe(endpoint: Endpoint, **env: str) -> object:
    async with aiohttp.ClientSession() as session:
        return await Prober().probe(session, endpoint, Settings.load(environ=env))


async def test_probe_reports_version_inventory_and_loaded_models() -> None:
    async with OllamaEmulator(loaded=["llama3.2"]) as node:
        snap = await probe(Endpoint("ollama", "127.0.0.1", node.port),
                           SOLLOL_OLLAMA_PARALLEL="4")
    assert snap.health is Health.UP and snap.version == "0.33.0"
    assert snap.parallel == 4 and snap.latency_ms is not None
    models = {m.name: m for m in snap.models}
    assert models["llama3.2:latest"].loaded and models["llama3.2:latest"].vram_bytes > 0
    assert not models["all-minilm:latest"].loaded
    assert models["llama3.2:latest"].details["family"] == "llama"
    assert models["llama3.2:latest"].digest


async def test_probe_marks_unreachable_and_foreign_servers_down() -> None:
    snap = await probe(Endpoint("ollama", "127.0.0.1", free_port()))
    assert snap.health is Health.DOWN and "unreachable" in snap.detail
    async with not_ollama() as other:
        host, port = other.split(":")
        snap = await probe(Endpoint("ollama", host, int(port)))
    assert snap.health is Health.DOWN and "not an Ollama API" in snap.detail


async def test_probe_of_a_hung_node_is_bounded_by_the_health_timeout() -> None:
    async with bare_tcp("127.0.0.1", port := free_port()):
        snap = await probe(Endpoint("ollama", "127.0.0.1", port), SOLLOL_HEALTH_TIMEOUT="0.3")
    assert snap.health is Health.DOWN and "0.3 s" in snap.detail
