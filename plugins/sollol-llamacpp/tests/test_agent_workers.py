"""RPC workers through ``sollol agent``: real rpc-server processes, started and stopped when a
router asks, and none left when the agent stops."""

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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.rpc_probe import probe_rpc

from sollol_core.agent.app import create_agent_app
from sollol_core.config import PluginSettings, Settings
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.types import Health, Role

TOKEN = "w0rkers"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gone(pid: int) -> bool:
    """Not running and not a zombie: stopped and reaped."""
    return not psutil.pid_exists(pid)  # a zombie still exists


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    """The agent token file of agents and routers in a test (never the user's real one)."""
    return str(tmp_path / "agent-token")


def agent_settings(token_file: str, **flags: Any) -> Settings:
    return Settings.load(environ={}, flags={"discovery.agent_token_file": token_file, **flags})


async def test_agent_starts_lists_and_stops_real_workers(binaries: Binaries, token_file: str,
                                                         aiohttp_client: Any) -> None:
    settings = agent_settings(token_file, **{"agent.max_workers": 2})
    client = await aiohttp_client(create_agent_app(Plugins.load(), settings, token=TOKEN))
    assert (await client.post("/v1/workers", json={"count": 1})).status == 401

    response = await client.post("/v1/workers", json={"count": 2, "first_port": 50652},
                                 headers=AUTH)
    assert response.status == 201, await response.text()
    started = (await response.json())["workers"]
    assert [w["host"] for w in started] == ["127.0.0.1", "127.0.0.1"]
    assert all(w["port"] >= 50652 and w["alive"] for w in started)
    for worker in started:
        assert (await probe_rpc(worker["host"], worker["port"])).state == "ok"
        assert psutil.Process(worker["pid"]).ppid() == os.getpid()  # the agent's child
    listed = (await (await client.get("/v1/workers", headers=AUTH)).json())["workers"]
    assert sorted(w["port"] for w in listed) == sorted(w["port"] for w in started)

    # the cap counts every worker the agent runs, whoever asked
    response = await client.post("/v1/workers", json={"count": 1}, headers=AUTH)
    assert response.status == 409
    assert "runs 2 RPC workers and at most 2" in (await response.json())["error"]
    assert len((await (await client.get("/v1/workers", headers=AUTH)).json())["workers"]) == 2

    first, second = started
    response = await client.delete(f"/v1/workers/{first['port']}", headers=AUTH)
    assert response.status == 200 and (await response.json())["stopped"] == [first["port"]]
    assert gone(first["pid"])
    assert (await client.delete(f"/v1/workers/{first['port']}", headers=AUTH)).status == 404
    listed = (await (await client.get("/v1/workers", headers=AUTH)).json())["workers"]
    assert [w["port"] for w in listed] == [second["port"]]

    cores = os.cpu_count() or 1
    for body, message in (({"count": 0}, "count"), ({"cuont": 1}, "cuont"),
                          ("two", "count"), ({"count": 65}, "count: expected 1-64"),
                          ({"count": 1, "threads": cores + 1}, f"threads: expected 1-{cores}"),
                          ({"count": 1, "threads": 0}, "threads")):
        response = await client.post("/v1/workers", json=body, headers=AUTH)
        assert response.status == 400 and message in (await response.json())["error"]

    await client.close()  # the agent stops: so does every worker it started
    assert gone(second["pid"])


def _request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={**AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_without_max_workers_an_agent_runs_one_worker_per_core(
        token_file: str, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_agent_app(Plugins.load(), agent_settings(token_file),
                                                   token=TOKEN))
    cores = os.cpu_count() or 1
    response = await client.post("/v1/workers", json={"count": cores + 1}, headers=AUTH)
    assert response.status == 409
    assert f"at most {cores}" in (await response.json())["error"]
    assert (await (await client.get("/v1/workers", headers=AUTH)).json())["workers"] == []
    me = psutil.Process()
    assert not [p for p in me.children() if p.name() in {"ggml-rpc-server", "rpc-server"}]


def test_the_agent_command_leaves_no_worker_when_it_stops(binaries: Binaries,
                                                          token_file: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLLOL_")
           or k in {"SOLLOL_LLAMACPP_BIN_DIR", "SOLLOL_CACHE_DIR"}}
    agent = subprocess.Popen([SOLLOL, "agent", "--port", str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**env, "SOLLOL_AGENT_TOKEN": TOKEN,
                                  "SOLLOL_AGENT_TOKEN_FILE": token_file,
                                  "SOLLOL_AGENT_MAX_WORKERS": "2"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert agent.poll() is None and time.monotonic() < deadline
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        status, body = _request("POST", f"{base}/v1/workers", {"count": 2, "first_port": 50752})
        assert status == 201, body
        pids = [w["pid"] for w in body["workers"]]
        assert {psutil.Process(pid).ppid() for pid in pids} == {agent.pid}
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert all(gone(pid) for pid in pids)


async def _serve(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def test_a_router_keeps_workers_on_its_agents_and_releases_them(
        binaries: Binaries, token_file: str) -> None:
    port = free_port()
    # no token configured on either side: the agent makes the file, the router reads it
    from sollol_core.agent.token import resolve_token

    agent_side = agent_settings(token_file, **{"agent.max_workers": 2})
    agent = create_agent_app(Plugins.load(), agent_side,
                             token=resolve_token(agent_side, create=True))
    async for _ in _serve(agent, port):
        settings = agent_settings(token_file, **{
            "discovery.agents": [f"127.0.0.1:{port}"], "llamacpp.agent_workers": 2})
        router = Router.create(settings, Plugins.load(PluginSettings(load=("llamacpp",))))
        await router.start()
        try:
            snapshot = router.fleet.snapshot()
            workers = [n for n in snapshot.nodes if n.role is Role.WORKER]
            assert len(workers) == 2
            assert all(n.health is Health.UP and n.endpoint.host == "127.0.0.1"
                       and n.endpoint.source == "agent" for n in workers)
            assert snapshot.telemetry_for("127.0.0.1") is not None  # the agent's machine
            await router.fleet.refresh()  # a second round starts no more
            assert len(agent_pool(agent).workers()) == 2
        finally:
            await router.stop()
        assert agent_pool(agent).workers() == []  # the router released what it asked for


def agent_pool(app: web.Application) -> Any:
    from sollol_llamacpp.agent_workers import POOL

    return app[POOL]


class FakeAgent:
    """The agent's worker routes without processes: what the router side sees of an agent."""

    def __init__(self, running: int) -> None:
        self.ports = list(range(51000, 51000 + running))
        self.stopped: list[int] = []

    def app(self) -> web.Application:
        app = web.Application()

        def body(ports: list[int]) -> dict[str, Any]:
            return {"workers": [{"host": "127.0.0.9", "port": p, "pid": 1, "restarts": 0,
                                 "alive": True} for p in ports]}

        async def listed(request: web.Request) -> web.Response:
            return web.json_response(body(self.ports))

        async def start(request: web.Request) -> web.Response:
            count = (await request.json())["count"]
            new = list(range(max(self.ports, default=50999) + 1,
                             max(self.ports, default=50999) + 1 + count))
            self.ports += new
            return web.json_response(body(new), status=201)

        async def stop(request: web.Request) -> web.Response:
            port = int(request.match_info["port"])
            self.ports.remove(port)
            self.stopped.append(port)
            return web.json_response({"stopped": [port]})

        app.router.add_get("/v1/workers", listed)
        app.router.add_post("/v1/workers", start)
        app.router.add_delete("/v1/workers/{port}", stop)
        return app


async def test_the_router_tops_agents_up_and_stops_only_what_it_started(
        token_file: str) -> None:
    from sollol_llamacpp.agent_workers import AgentWorkers

    from sollol_core.http import Sessions

    one, two = FakeAgent(running=1), FakeAgent(running=3)
    ports = [free_port(), free_port()]
    down = free_port()
    async for _ in _serve(one.app(), ports[0]):
        async for _ in _serve(two.app(), ports[1]):
            settings = agent_settings(token_file, **{
                "discovery.agents": [f"127.0.0.1:{p}" for p in (*ports, down)],
                "llamacpp.agent_workers": 2})
            keeper, sessions = AgentWorkers(), Sessions()
            found = await keeper.ensure(settings, sessions)
            assert sorted(e.port for e in found) == [51000, 51000, 51001, 51001, 51002]
            assert {(e.host, e.kind, e.source) for e in found} == {
                ("127.0.0.9", "llamacpp-rpc", "agent")}
            assert (len(one.ports), len(two.ports)) == (2, 3)  # one topped up, two had enough
            assert len(await keeper.ensure(settings, sessions)) == 5  # nothing more started
            await keeper.release(settings, sessions)
            assert (one.stopped, two.stopped) == ([51001], [])


async def test_a_worker_stopped_while_it_awaits_its_restart_stays_stopped(
        binaries: Binaries) -> None:
    import asyncio

    from sollol_llamacpp.workers import WorkerPool

    pool = WorkerPool(binaries)
    try:
        (endpoint,) = await pool.start(1, first_port=50852)
        pool.workers[0].child.process.kill()
        await asyncio.sleep(0.7)  # the supervisor has seen it die and waits to restart it
        assert await pool.stop_worker(endpoint.port)
        assert not await pool.stop_worker(endpoint.port)
        await asyncio.sleep(1.5)
        assert pool.workers == []
        me = psutil.Process()
        assert not [p for p in me.children() if p.name() in {"ggml-rpc-server", "rpc-server"}]
    finally:
        await pool.stop()
