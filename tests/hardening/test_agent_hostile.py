"""``sollol agent`` against what a web page or another local user could send: a real agent process
with no token configured, which must make its own, refuse requests without it, and refuse pages of
other sites, DNS-rebound names and cross-site body types before they start anything."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from sollol_core.agent.client import AgentClient, AgentError, agent_endpoints
from sollol_core.config import Settings

from .conftest import Served, clean_env, start_process

EVIL_PAGE = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
START_ONE = json.dumps({"count": 1})


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    """The user config directory the agent sees (the real one is never touched)."""
    return tmp_path / "home" / ".config"


@pytest.fixture
def token_file(config_home: Path) -> Path:
    return config_home / "sollol" / "agent-token"


@pytest.fixture
async def agent(config_home: Path, tmp_path: Path) -> AsyncIterator[Served]:
    """``sollol agent`` with no token configured anywhere."""
    env = clean_env(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(config_home))
    served = await start_process(["agent"], env)
    try:
        yield served
    finally:
        served.stop()


def stored_token(path: Path) -> str:
    """The token the agent keeps in ``path``."""
    return path.read_text(encoding="utf-8").strip()


def permissions(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def request(served: Served, method: str, path: str, *, token: str | None = None,
                  headers: dict[str, str] | None = None, data: str | None = None,
                  ) -> tuple[int, Any]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.request(
            method, served.url + path, data=data, headers={**auth, **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=10)) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def assert_nothing_started(served: Served, token: str) -> None:
    status, body = await request(served, "GET", "/v1/workers", token=token)
    assert (status, body) == (200, {"workers": []})
    assert psutil.Process(served.process.pid).children(recursive=True) == []


async def test_without_a_token_the_agent_makes_a_private_one_and_says_where(
        config_home: Path, token_file: Path, tmp_path: Path) -> None:
    env = clean_env(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(config_home))
    served = await start_process(["agent"], env)
    assert served.stop() == 0
    token = stored_token(token_file)
    assert len(token) >= 40
    assert permissions(token_file) == 0o600
    assert f"agent token in {token_file}" in served.stderr()
    again = await start_process(["agent"], env)  # a restart keeps it: routers need not change
    try:
        assert (await request(again, "GET", "/v1/agent", token=token))[0] == 200
    finally:
        again.stop()
    assert stored_token(token_file) == token


async def test_a_request_without_the_token_is_refused(agent: Served, token_file: Path) -> None:
    for method, path in (("GET", "/v1/telemetry"), ("GET", "/v1/workers"),
                         ("POST", "/v1/workers"), ("DELETE", "/v1/workers")):
        status, body = await request(agent, method, path, data=START_ONE,
                                     headers={"Content-Type": "application/json"})
        assert status == 401 and "agent token" in body["error"], (method, path)
        wrong = await request(agent, method, path, token="guessed")
        assert wrong[0] == 401
    assert (await request(agent, "GET", "/health"))[0] == 200
    await assert_nothing_started(agent, stored_token(token_file))


@pytest.mark.parametrize("with_token", [False, True])
async def test_a_cross_site_post_is_refused_and_starts_nothing(
        agent: Served, token_file: Path, with_token: bool) -> None:
    token = stored_token(token_file)
    status, body = await request(agent, "POST", "/v1/workers", data=START_ONE,
                                 token=token if with_token else None, headers=EVIL_PAGE)
    assert status == 403 and "evil.example" in body["error"]
    await assert_nothing_started(agent, token)


async def test_a_dns_rebound_name_is_refused(agent: Served, token_file: Path) -> None:
    token = stored_token(token_file)
    for method, path in (("GET", "/v1/telemetry"), ("POST", "/v1/workers")):
        status, body = await request(
            agent, method, path, token=token, data=START_ONE,
            headers={"Host": f"evil.example:{agent.port}", "Content-Type": "application/json"})
        assert status == 403 and "evil.example" in body["error"], (method, path)
    await assert_nothing_started(agent, token)


async def test_a_text_plain_post_is_refused_even_with_the_token(
        agent: Served, token_file: Path) -> None:
    token = stored_token(token_file)
    status, body = await request(agent, "POST", "/v1/workers", token=token, data=START_ONE,
                                 headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]
    await assert_nothing_started(agent, token)


async def test_a_router_with_the_same_token_file_needs_no_setting(
        agent: Served, token_file: Path, tmp_path: Path) -> None:
    router = Settings.load(environ={"SOLLOL_AGENTS": f"127.0.0.1:{agent.port}",
                                    "SOLLOL_AGENT_TOKEN_FILE": str(token_file)})
    elsewhere = Settings.load(environ={"SOLLOL_AGENTS": f"127.0.0.1:{agent.port}",
                                       "SOLLOL_AGENT_TOKEN_FILE": str(tmp_path / "none")})
    (endpoint,) = agent_endpoints(router)
    async with aiohttp.ClientSession() as session:
        about = await AgentClient.of(endpoint, session, router).call("GET", "/v1/agent")
        assert "/v1/telemetry" in about["routes"]
        telemetry = await AgentClient.of(endpoint, session, router).telemetry()
        assert telemetry.host == "127.0.0.1"
        with pytest.raises(AgentError, match="refused the token"):
            await AgentClient.of(endpoint, session, elsewhere).call("GET", "/v1/agent")
    assert not (tmp_path / "none").exists()  # a router never makes the file
