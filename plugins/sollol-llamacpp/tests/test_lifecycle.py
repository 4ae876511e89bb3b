"""A program that uses SOLLOL and never closes it (the guide's examples never do), or that is
killed outright, leaves no llama.cpp process behind: not a coordinator, not a worker, no zombie."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.plugin import LlamacppPlugin

from .conftest import LLAMA_PROCESSES

#: The seed guide's shape: a synchronous HybridRouter that starts its own workers, one sharded
#: request, and no close().
PROGRAM = """
import sys
from sollol_core.config import Settings
from sollol_core.sync import HybridRouter

router = HybridRouter(enable_distributed=True, auto_setup_rpc=True, num_rpc_backends=2,
                      gguf_path=sys.argv[1],
                      settings=Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "llamacpp",
                                                      "SOLLOL_LLAMACPP_BIN_DIR": sys.argv[2]}))
reply = router.route_request("gemma3:270m", [{"role": "user", "content": "Hi"}], max_tokens=2)
print(reply["_routing"]["backend"], flush=True)
if sys.argv[3] == "wait":
    import time
    time.sleep(600)
"""


def llama_processes() -> dict[int, str]:
    """Every llama.cpp process on this machine, zombies included, with its state."""
    found = {}
    for process in psutil.process_iter(["name", "status"]):
        if process.info["name"] in LLAMA_PROCESSES:
            found[process.pid] = process.info["status"]
    return found


def run(gemma: Path, binaries: Binaries, mode: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
    return subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(gemma), str(binaries.rpc_server.parent), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_program_that_never_closes_its_router_leaves_nothing(
        gemma: Path, binaries: Binaries) -> None:
    before = llama_processes()
    program = run(gemma, binaries, "exit")
    out, err = program.communicate(timeout=300)
    assert program.returncode == 0, err
    assert out.split() == ["sharded"]
    left = {pid: state for pid, state in llama_processes().items() if pid not in before}
    assert left == {}  # stopped and reaped before the program ended


def test_a_program_killed_outright_takes_its_llama_processes_with_it(
        gemma: Path, binaries: Binaries) -> None:
    before = llama_processes()
    program = run(gemma, binaries, "wait")
    assert program.stdout is not None
    assert program.stdout.readline().split() == ["sharded"]
    started = {pid for pid in llama_processes() if pid not in before}
    assert len(started) == 3  # two workers and the coordinator
    program.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only the kernel is left
    program.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            state != psutil.STATUS_ZOMBIE for pid, state in llama_processes().items()
            if pid in started):
        time.sleep(0.1)
    assert not [pid for pid, state in llama_processes().items()
                if pid in started and state != psutil.STATUS_ZOMBIE]


async def test_auto_setup_over_an_auto_configured_pool_starts_the_workers_it_asks_for(
        gemma: Path, binaries: Binaries, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's first example: the pool is already running when the HybridRouter asks for
    RPC workers; they start before its first request, and that request is sharded over them."""
    from sollol_core.api import HybridRouter, OllamaPool
    from sollol_core.config import Settings

    monkeypatch.setenv("SOLLOL_LLAMACPP_BIN_DIR", str(binaries.rpc_server.parent))
    settings = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "llamacpp,ollama",
                                      "SOLLOL_IMPLICIT_NODES": "false",
                                      "SOLLOL_LLAMACPP_BIN_DIR": str(binaries.rpc_server.parent)})
    pool = await OllamaPool.auto_configure(settings=settings)
    router = HybridRouter(ollama_pool=pool, enable_distributed=True, auto_setup_rpc=True,
                          num_rpc_backends=2, gguf_path=gemma)
    try:
        reply = await router.route_request("gemma3:270m", [{"role": "user", "content": "Hi"}],
                                           max_tokens=2)
        plugin = pool.router.plugins.get(LlamacppPlugin)
        assert plugin is not None and plugin.pool is not None
        started = {w.endpoint.address for w in plugin.pool.workers}
        assert len(started) == 2
        assert reply["_routing"]["backend"] == "sharded"
        assert set(reply["_routing"]["node"].removeprefix("sharded:").split(",")) == started
    finally:
        await router.close()
    assert plugin.pool is None  # stopped with the router


async def test_a_worker_that_dies_under_a_live_coordinator_is_noticed_by_the_next_probe(
        gemma: Path, binaries: Binaries, tmp_path: Path) -> None:
    from sollol_llamacpp.settings import LlamacppSettings
    from sollol_llamacpp.testing import rpc_workers

    from sollol_core.config import Settings
    from sollol_core.router import Router
    from sollol_core.types import Health, InferenceRequest

    with rpc_workers(binaries, 2, tmp_path) as workers:
        base = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "llamacpp",
                                      "SOLLOL_IMPLICIT_NODES": "false",
                                      "SOLLOL_HEALTH_INTERVAL": "0.5"})
        router = Router.create(base.with_sections(LlamacppSettings(
            rpc_backends=tuple(workers), models={"gemma3:270m": str(gemma)},
            context_size=1024, parallel=1)))
        await router.start()
        try:
            hi = InferenceRequest.chat("gemma3:270m", [{"role": "user", "content": "Hi"}],
                                       options={"num_predict": 2})
            _, routing = await router.run(hi)
            assert routing.backend == "sharded" and routing.node.count(",") == 1
            plugin = router.plugins.get(LlamacppPlugin)
            assert plugin is not None and plugin.coordinators is not None
            (coordinator,) = plugin.coordinators.running.values()
            victim = workers[1]
            port = int(victim.split(":")[1])
            (process,) = [p for p in psutil.process_iter(["name"])
                          if p.info["name"] in LLAMA_PROCESSES
                          and any(c.laddr and c.laddr.port == port and c.status == "LISTEN"
                                  for c in p.net_connections("tcp"))]
            process.kill()
            def health_of(address: str) -> Health:
                (node,) = [n for n in router.fleet.snapshot().nodes
                           if n.endpoint.address == address]
                return node.health

            for _ in range(150):  # a few probe rounds (0.5 s each), no request sent
                if coordinator.child.process.returncode is not None \
                        and health_of(victim) is Health.DOWN:
                    break
                await asyncio.sleep(0.1)
            assert not plugin.coordinators.running  # its coordinator was taken out,
            assert coordinator.child.process.returncode is not None  # stopped and reaped,
            assert health_of(victim) is Health.DOWN  # and the fleet knows
            for _ in range(50):  # the worker left is free again at its next probe
                if health_of(workers[0]) is Health.UP:
                    break
                await asyncio.sleep(0.1)
            _, again = await router.run(hi)  # rebuilt on the worker left
            assert again.backend == "sharded" and again.node == f"sharded:{workers[0]}"
        finally:
            await router.stop()
