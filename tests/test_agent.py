"""``sollol agent``: its application, the real command, and a router that uses its telemetry."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from attrs import evolve
from sollol_llamacpp.settings import LlamacppSettings

from sollol_core.agent.app import advertised_host, create_agent_app
from sollol_core.config import AgentSettings, PluginSettings, Settings
from sollol_core.convert import structure
from sollol_core.errors import SollolError
from sollol_core.hookspecs import hookimpl
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import StaticBackend, node
from sollol_core.types import DeviceTelemetry, Telemetry

GiB = 1024**3
TOKEN = "agent-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SOLLOL_") and k not in {"RPC_BACKENDS", "OLLAMA_NODES"}}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """Where agents and routers of a test keep their token (never the user's real one)."""
    return tmp_path / "config" / "agent-token"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOLLOL, *args], capture_output=True, text=True, timeout=60,
                          env={**clean_env(), **env})


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def agent_settings(**flags: Any) -> Settings:
    return Settings.load(environ={}, flags=flags)


# -- the application ---------------------------------------------------------------------------


async def test_every_route_but_health_needs_the_token(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_agent_app(Plugins.load(), agent_settings(),
                                                   token=TOKEN))
    assert (await client.get("/health")).status == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for path in ("/v1/telemetry", "/v1/agent", "/v1/workers"):
            response = await client.get(path, headers=headers)
            assert response.status == 401, (path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "agent token" in (await response.json())["error"]
    assert (await client.get("/v1/agent", headers=AUTH)).status == 200


async def test_telemetry_is_this_machine_measured_by_the_installed_plugins(
        aiohttp_client: Any) -> None:
    # A config shared with the router may name agents: an agent never asks them.
    settings = agent_settings(**{"discovery.agents": [f"127.0.0.1:{free_port()}"]})
    client = await aiohttp_client(create_agent_app(Plugins.load(), settings, token=TOKEN))
    response = await client.get("/v1/telemetry", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    telemetry = structure(body, Telemetry)  # the one converter reads it back
    assert telemetry.host == socket.gethostname()
    assert "cpu" in telemetry.source.split("+")  # the real sollol-cpu plugin
    assert telemetry.ram_total_bytes and telemetry.ram_free_bytes
    assert 0 < telemetry.ram_free_bytes <= telemetry.ram_total_bytes
    assert telemetry.cpu_count and telemetry.cpu_count > 0
    about = await (await client.get("/v1/agent", headers=AUTH)).json()
    assert about["advertise"] == "127.0.0.1"
    assert {"/v1/telemetry", "/v1/workers"} <= set(about["routes"])


async def test_pages_of_other_sites_and_rebound_names_are_refused_before_the_token(
        aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_agent_app(Plugins.load(), agent_settings(),
                                                   token=TOKEN))
    evil = {"Origin": "https://evil.example"}
    for headers in (evil, {**evil, **AUTH}):
        response = await client.post("/v1/workers", data='{"count": 1}',
                                     headers={**headers, "Content-Type": "text/plain"})
        assert response.status == 403
        assert "evil.example" in (await response.json())["error"]
        assert (await client.get("/v1/telemetry", headers=headers)).status == 403
    rebound = await client.get("/v1/agent", headers={**AUTH, "Host": "evil.example"})
    assert rebound.status == 403 and "evil.example" in (await rebound.json())["error"]
    form = await client.post("/v1/workers", data='{"count": 1}',
                             headers={**AUTH, "Content-Type": "text/plain"})
    assert form.status == 415 and "application/json" in (await form.json())["error"]
    assert (await client.get("/health", headers=evil)).status == 200  # liveness stays public
    local_page = {**AUTH, "Origin": "http://127.0.0.1:3000"}
    assert (await client.get("/v1/agent", headers=local_page)).status == 200


def test_an_agent_app_cannot_be_made_without_a_token() -> None:
    with pytest.raises(ValueError, match="token"):
        create_agent_app(Plugins.load(PluginSettings(load=())), agent_settings(), token="")


async def test_without_telemetry_plugins_the_agent_says_what_to_install(
        aiohttp_client: Any) -> None:
    plugins = Plugins.load(PluginSettings(load=()))
    client = await aiohttp_client(create_agent_app(plugins, agent_settings(), token=TOKEN))
    response = await client.get("/v1/telemetry", headers=AUTH)
    assert response.status == 503
    assert "sollol-cpu" in (await response.json())["error"]


def test_the_advertised_address() -> None:
    assert advertised_host(AgentSettings(host="127.0.0.3")) == "127.0.0.3"
    assert advertised_host(AgentSettings(host="0.0.0.0", advertise="gpu-box")) == "gpu-box"
    assert advertised_host(AgentSettings(host="0.0.0.0")) not in {"", "0.0.0.0"}


def test_agent_settings_from_the_environment() -> None:
    settings = Settings.load(environ={
        "SOLLOL_AGENTS": "10.0.0.7, gpu-box:9000", "SOLLOL_AGENT_TOKEN": "t",
        "SOLLOL_AGENT_PORT": "9001", "SOLLOL_AGENT_WORKERS": "2"})
    assert settings.discovery.agents == ("10.0.0.7", "gpu-box:9000")
    assert settings.discovery.agent_token == "t"
    assert settings.agent.port == 9001
    assert settings.section(LlamacppSettings).agent_workers == 2
    from sollol_core.agent.client import agent_endpoints

    assert [e.address for e in agent_endpoints(settings)] == ["10.0.0.7:11436", "gpu-box:9000"]


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def agent_process(token_file: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = subprocess.Popen([SOLLOL, "agent", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**clean_env(), "SOLLOL_AGENT_TOKEN": TOKEN,
                                    "SOLLOL_AGENT_TOKEN_FILE": str(token_file)})
    try:
        wait_for_health(port, process)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def wait_for_health(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if get(f"http://127.0.0.1:{port}/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the agent did not come up")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_agent_command_serves_and_stops_on_a_signal(
        agent_process: tuple[subprocess.Popen[str], int], sig: signal.Signals,
        token_file: Path) -> None:
    process, port = agent_process
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/v1/telemetry")[0] == 401
    status, body = get(f"{base}/v1/telemetry", token=TOKEN)
    assert status == 200 and json.loads(body)["host"] == socket.gethostname()
    busy = run("agent", "--port", str(port), env={"SOLLOL_AGENT_TOKEN": TOKEN})
    assert busy.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in busy.stderr
    process.send_signal(sig)
    assert process.wait(timeout=15) == 0
    printed = process.stderr.read() if process.stderr else ""
    assert f"SOLLOL agent on http://127.0.0.1:{port}" in printed
    assert "agent token in" not in printed and not token_file.exists()  # the configured token


def test_agent_refuses_a_non_loopback_address_without_allow_remote(token_file: Path) -> None:
    result = run("agent", "--port", str(free_port()), "--host", "192.0.2.10",
                 env={"SOLLOL_AGENT_TOKEN_FILE": str(token_file)})
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("sollol: error:")]
    assert "pass --allow-remote" in line and "192.0.2.10" in line, result.stderr
    assert result.stdout == ""
    assert not token_file.exists()  # refused before anything was made


def test_a_remote_address_with_allow_remote_starts_with_a_warning() -> None:
    from sollol_core.agent.serve import UnsafeAddress, check_address

    assert check_address(agent_settings(**{"agent.host": "::1"})) == []
    # no token configured: the agent's token file is its token
    (warning,) = check_address(agent_settings(**{
        "agent.host": "192.0.2.10", "agent.allow_remote": True}))
    assert warning.startswith("warning:") and "192.0.2.10" in warning
    with pytest.raises(UnsafeAddress, match="--allow-remote"):
        check_address(agent_settings(**{"agent.host": "0.0.0.0",
                                        "discovery.agent_token": TOKEN}))


# -- the token ---------------------------------------------------------------------------------


def test_an_agent_without_a_token_makes_a_private_one_and_routers_read_it(
        token_file: Path) -> None:
    from sollol_core.agent.token import resolve_token

    settings = agent_settings(**{"discovery.agent_token_file": str(token_file)})
    assert resolve_token(settings, create=False) == ""  # a router never makes it
    assert not token_file.exists()
    token = resolve_token(settings, create=True)
    assert len(token) >= 40 and token_file.read_text().strip() == token
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert resolve_token(settings, create=True) == token  # kept across restarts
    assert resolve_token(settings, create=False) == token  # the router on this machine
    configured = evolve(settings, discovery=evolve(settings.discovery, agent_token="mine"))
    assert resolve_token(configured, create=True) == "mine"  # a configured token wins
    token_file.write_text("")
    with pytest.raises(SollolError, match="empty"):
        resolve_token(settings, create=True)  # an agent never runs without one


def test_the_default_token_file_is_in_sollols_config_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sollol_core.agent.token import resolve_token, token_path

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = agent_settings()
    path = token_path(settings)
    assert path.name == "agent-token" and path.parent.name == "sollol"
    assert path.is_relative_to(tmp_path)
    token = resolve_token(settings, create=True)
    assert path.read_text().strip() == token
    from_env = Settings.load(environ={"SOLLOL_AGENT_TOKEN_FILE": str(tmp_path / "elsewhere")})
    assert token_path(from_env) == tmp_path / "elsewhere"


# -- a router that uses agents -----------------------------------------------------------------


class FixedGauge:
    """The agent machine's telemetry: one GPU with 7 GiB free, 60 GiB of free RAM."""

    @hookimpl
    def sollol_collect_telemetry(self) -> Awaitable[Telemetry]:
        async def measure() -> Telemetry:
            return Telemetry(
                host=socket.gethostname(), source="fixed", taken_at=time.time(),
                ram_free_bytes=60 * GiB, devices=(DeviceTelemetry(
                    0, "GPU 0", memory_total_bytes=24 * GiB, memory_free_bytes=7 * GiB),))

        return measure()


async def serve_agent(plugins: Plugins, settings: Settings) -> AsyncIterator[int]:
    runner = web.AppRunner(create_agent_app(plugins, settings, token=TOKEN))
    await runner.setup()
    port = free_port(settings.agent.host)
    await web.TCPSite(runner, settings.agent.host, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def fixed_agent() -> AsyncIterator[int]:
    """An agent on 127.0.0.2 whose machine has the telemetry of :class:`FixedGauge`."""
    plugins = Plugins.load(PluginSettings(load=()), extra=[("fixed", FixedGauge())])
    async for port in serve_agent(plugins, agent_settings(**{"agent.host": "127.0.0.2"})):
        yield port


async def test_placement_sees_the_agents_telemetry_for_nodes_on_its_host(
        fixed_agent: int) -> None:
    unreachable = free_port()
    settings = Settings.load(environ={}, flags={
        "discovery.agents": [f"127.0.0.2:{fixed_agent}", f"127.0.0.1:{unreachable}"],
        "discovery.agent_token": TOKEN})
    on_agent = evolve(node("127.0.0.2"), devices=())  # its probe measured no memory
    elsewhere = evolve(node("192.0.2.1"), devices=())
    plugins = Plugins.load(PluginSettings(load=()),
                           extra=[("static", StaticBackend([on_agent, elsewhere]))])
    router = Router.create(settings, plugins)
    await router.start()
    try:
        snapshot = router.fleet.snapshot()
        machine = snapshot.telemetry_for("127.0.0.2")
        assert machine is not None and machine.source == "agent:fixed"
        assert machine.ram_free_bytes == 60 * GiB
        agent_node = next(n for n in snapshot.nodes if n.endpoint.host == "127.0.0.2")
        other_node = next(n for n in snapshot.nodes if n.endpoint.host == "192.0.2.1")
        assert snapshot.free_bytes_of(agent_node) == 7 * GiB  # the agent's GPU, not its RAM
        assert snapshot.free_bytes_of(other_node) is None
        agents = plugins.status()["agents"]
        assert agents[f"127.0.0.2:{fixed_agent}"]["ok"] is True
        down = agents[f"127.0.0.1:{unreachable}"]
        assert down["ok"] is False and "does not answer" in down["detail"]
    finally:
        await router.stop()
    assert "agents" not in plugins.status()  # a stopped router's agents are not reported


async def test_a_wrong_token_is_reported_not_fatal(fixed_agent: int) -> None:
    settings = Settings.load(environ={}, flags={
        "discovery.agents": [f"127.0.0.2:{fixed_agent}"], "discovery.agent_token": "nope"})
    plugins = Plugins.load(PluginSettings(load=()))
    router = Router.create(settings, plugins)
    await router.start()
    try:
        assert router.fleet.snapshot().telemetry_for("127.0.0.2") is None
        seen = plugins.status()["agents"][f"127.0.0.2:{fixed_agent}"]
        assert seen["ok"] is False and "refused the token" in seen["detail"]
    finally:
        await router.stop()
