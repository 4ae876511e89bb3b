"""Sharding for real: Gemma 3 270M split over local llama.cpp RPC workers under a coordinator
SOLLOL starts, compared with one plain llama-server, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from attrs import evolve
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.coordinator import Coordinators
from sollol_llamacpp.plugin import LlamacppPlugin
from sollol_llamacpp.rpc_probe import probe_rpc
from sollol_llamacpp.settings import LlamacppSettings
from sollol_llamacpp.testing import ollama_store, rpc_workers

from sollol_core.config import Settings
from sollol_core.errors import BackendError
from sollol_core.router import Router
from sollol_core.types import Health, InferenceRequest, Operation, model_key

PROMPT = "The three primary colours are"
SAMPLING = {"temperature": 0, "num_predict": 24, "seed": 1}


def settings(workers: list[str], models: dict[str, Path], **env: str) -> Settings:
    base = Settings.load(environ={"RPC_BACKENDS": ",".join(workers),
                                  "SOLLOL_LOAD_PLUGINS": "llamacpp",
                                  "SOLLOL_HEALTH_INTERVAL": "0.5",
                                  "SOLLOL_COORDINATOR_TIMEOUT": "120", **env})
    llamacpp = evolve(base.section(LlamacppSettings),
                      models={k: str(v) for k, v in models.items()}, context_size=1024, parallel=1)
    return base.with_sections(llamacpp)


def llamacpp(router: Router) -> LlamacppPlugin:
    """The llama.cpp plugin object of this router (each router has its own)."""
    plugin = router.plugins.get(LlamacppPlugin)
    assert plugin is not None
    return plugin


def coordinators(router: Router) -> Coordinators:
    """The coordinators of this router's llama.cpp plugin (while it runs)."""
    running = llamacpp(router).coordinators
    assert running is not None
    return running


async def wait_free(workers: list[str]) -> None:
    """Until every worker answers HELLO: one a coordinator just left needs a moment."""
    for address in workers:
        host, port = address.split(":")
        for _ in range(100):
            if (await probe_rpc(host, int(port), timeout_s=0.5)).state == "ok":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"worker {address} stays busy")


@contextlib.asynccontextmanager
async def router(workers: list[str], models: dict[str, Path], **env: str) -> AsyncIterator[Router]:
    await wait_free(workers)
    r = Router.create(settings(workers, models, **env))
    await r.start()
    # what each model needs was read from its GGUF's header during the first discovery
    assert all(model_key(m) in llamacpp(r).footprints for m in models)
    try:
        yield r
    finally:
        await r.stop()


def raw_generate(model: str, *, stream: bool = False, **options: Any) -> InferenceRequest:
    return InferenceRequest(operation=Operation.GENERATE, model=model, stream=stream,
                            body={"model": model, "prompt": PROMPT, "raw": True, "stream": stream,
                                  "options": {**SAMPLING, **options}})


@contextlib.contextmanager
def single_llama_server(binaries: Binaries, gguf: Path, log: Path) -> Any:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [str(binaries.llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "-c", "1024", "-np", "1"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.kill()
        process.wait()


async def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            assert process.poll() is None, "llama-server exited"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError("llama-server never became healthy")


@pytest.mark.parametrize("worker_count", [2, 3])
async def test_sharded_answer_equals_a_single_llama_server(
        worker_count: int, binaries: Binaries, gemma: Path, shared_workers: list[str],
        tmp_path: Path) -> None:
    workers = shared_workers[:worker_count]
    async with router(workers, {"gemma3:270m": gemma},
                      SOLLOL_MIN_SHARD_WORKERS=str(worker_count)) as r:
        chunks, routing = await r.run(raw_generate("gemma3:270m"))
    sharded = chunks[-1]["response"]
    assert routing.backend == "sharded"
    assert set(routing.node.removeprefix("sharded:").split(",")) == set(workers)
    assert f"over {worker_count} RPC workers (memory_aware, layers " in routing.reason
    assert "needs 0.2" in routing.reason  # GiB, from the GGUF: weights + KV cache + buffers
    assert chunks[-1]["done"] and chunks[-1]["eval_count"] > 0

    with single_llama_server(binaries, gemma, tmp_path / "single.log") as (url, process):
        await wait_healthy(url, process)
        async with aiohttp.ClientSession() as session, session.post(
                f"{url}/v1/completions",
                json={"prompt": PROMPT, "temperature": 0, "max_tokens": 24, "seed": 1}) as r:
            single = (await r.json())["choices"][0]["text"]
    assert sharded.strip() and sharded == single


async def test_workers_report_memory_then_busy_while_a_coordinator_holds_them(
        gemma: Path, shared_workers: list[str]) -> None:
    first, second = shared_workers[0], shared_workers[1]
    idle = await probe_rpc(*first.split(":")[:1], int(first.split(":")[1]), timeout_s=1)
    assert idle.state == "ok" and idle.version == (7, 0, 0)
    assert idle.devices and 0 < idle.devices[0].free_bytes <= idle.devices[0].total_bytes
    async with router([first, second], {"gemma3:270m": gemma}) as r:
        _, routing = await r.run(raw_generate("gemma3:270m", num_predict=2))
        # what the dashboard and /metrics show of it: which layers sit on which worker
        (panel,) = [p for p in r.plugins.dashboard_panels() if p.key == "llamacpp-coordinators"]
        (group,) = panel.groups
        assert group.title == "gemma3:270m" and group.status == "ok"
        planned = routing.reason.split("layers ")[1].rstrip(")").split("/")
        assert [row[1] for row in group.rows] == [
            f"layers {start}–{start + int(n) - 1} ({n})"
            for start, n in zip([0, int(planned[0])], planned, strict=True)]
        gauges = {m.name: m.samples for m in r.plugins.metrics()}
        assert gauges["sollol_coordinators"][0].value == 1
        assert gauges["sollol_coordinator_workers"][0].value == 2
        held = await probe_rpc("127.0.0.1", int(first.split(":")[1]), timeout_s=0.5)
        assert held.state == "busy"
        snapshot = await r.fleet.refresh()
        states = {n.endpoint.address: (n.health, n.detail) for n in snapshot.nodes}
        assert states[first] == (Health.BUSY, "held by the coordinator for gemma3:270m")
    free_again = await probe_rpc("127.0.0.1", int(first.split(":")[1]), timeout_s=1)
    assert free_again.state == "ok"


async def test_coordinator_is_reused_then_unloaded_when_idle(
        gemma: Path, shared_workers: list[str]) -> None:
    async with router(shared_workers[:2], {"gemma3:270m": gemma},
                      SOLLOL_IDLE_UNLOAD="1") as r:
        await r.run(raw_generate("gemma3:270m", num_predict=2))
        running = coordinators(r)
        (first,) = running.running.values()
        await r.fleet.refresh()
        await r.run(raw_generate("gemma3:270m", num_predict=2))
        (again,) = running.running.values()
        assert again is first and again.child.pid == first.child.pid  # reused, not restarted
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not running.running and first.child.process.returncode is not None:
                break
            await asyncio.sleep(0.2)
        assert not running.running
        assert first.child.process.returncode is not None  # stopped, and reaped


async def test_a_coordinator_answering_is_never_unloaded_as_idle(
        gemma: Path, shared_workers: list[str]) -> None:
    async with router(shared_workers[:2], {"gemma3:270m": gemma},
                      SOLLOL_IDLE_UNLOAD="1") as r:
        reply = await r.open(raw_generate("gemma3:270m", stream=True, num_predict=16))
        chunks = [reply.first]
        (coordinator,) = coordinators(r).running.values()
        await asyncio.sleep(3.5)  # a slow client: longer than idle_unload_s and a watch round
        assert coordinator.alive and coordinator.in_flight == 1
        chunks += [chunk async for chunk in reply]
        assert chunks[-1] is not None and chunks[-1]["done"] is True
        assert coordinator.in_flight == 0


async def test_two_models_run_on_two_coordinators_over_disjoint_workers(
        binaries: Binaries, gemma: Path, tmp_path: Path) -> None:
    with rpc_workers(binaries, 4, tmp_path) as workers:
        async with router(workers, {"gemma-a": gemma, "gemma-b": gemma}) as r:
            a, b = await asyncio.gather(r.run(raw_generate("gemma-a", num_predict=4)),
                                        r.run(raw_generate("gemma-b", num_predict=4)))
            both = list(coordinators(r).running.values())
    used_a = set(a[1].node.removeprefix("sharded:").split(","))
    used_b = set(b[1].node.removeprefix("sharded:").split(","))
    assert len(both) == 2
    assert len(used_a) == 2 and len(used_b) == 2 and not used_a & used_b
    assert a[0][-1]["response"] == b[0][-1]["response"]  # same weights, same answer


async def test_killing_a_worker_mid_generation_fails_clearly_then_rebuilds_on_the_rest(
        binaries: Binaries, gemma: Path, tmp_path: Path) -> None:
    with rpc_workers(binaries, 3, tmp_path) as workers:
        async with router(workers, {"gemma3:270m": gemma}) as r:
            reply = await r.open(raw_generate("gemma3:270m", stream=True, num_predict=400))
            held = sorted(reply.decision.plan.workers, key=lambda e: e.key)  # type: ignore[union-attr]
            victim = held[0]
            received = 0
            with pytest.raises(BackendError) as failure:
                async for _chunk in reply:
                    received += 1
                    if received == 3:
                        _kill_listener(victim.port)
            assert received >= 3
            assert "coordinator" in str(failure.value)
            snapshot = await r.fleet.refresh()
            down = {n.endpoint.address for n in snapshot.nodes if n.health is Health.DOWN}
            assert down == {victim.address}
            chunks, routing = await r.run(raw_generate("gemma3:270m", num_predict=4))
    assert chunks[-1]["done"]
    assert victim.address not in routing.node
    assert len(routing.node.removeprefix("sharded:").split(",")) == 2


def _kill_listener(port: int) -> None:
    import psutil

    for process in psutil.process_iter(["name"]):
        if process.info["name"] in {"ggml-rpc-server", "rpc-server"}:
            with contextlib.suppress(psutil.Error):
                if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                       for c in process.net_connections()):
                    process.kill()
                    return
    raise AssertionError(f"no RPC worker listens on {port}")


async def test_a_coordinator_crash_mid_request_is_survived_by_a_non_streamed_request(
        gemma: Path, shared_workers: list[str]) -> None:
    async with router(shared_workers[:2], {"gemma3:270m": gemma}) as r:
        await r.run(raw_generate("gemma3:270m", num_predict=2))
        (crashed,) = coordinators(r).running.values()
        request = asyncio.create_task(r.run(raw_generate("gemma3:270m", num_predict=300)))
        await asyncio.sleep(1.0)
        crashed.child.process.kill()
        chunks, routing = await request
        (replacement,) = coordinators(r).running.values()
    assert chunks[-1]["done"] and chunks[-1]["eval_count"] > 0
    assert replacement.child.pid != crashed.child.pid
    assert routing.backend == "sharded"


async def test_the_python_api_starts_workers_and_shards_a_model_from_the_ollama_store(
        gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sollol_core import HybridRouter, OllamaPool
    from sollol_core.config import PluginSettings
    from sollol_core.plugins import Plugins

    monkeypatch.setenv("OLLAMA_MODELS",
                       str(ollama_store(tmp_path / "models", {"gemma3:270m": gemma})))
    pool = OllamaPool(plugins=Plugins.load(PluginSettings(load=("llamacpp",))))
    async with HybridRouter(pool, enable_distributed=True, auto_setup_rpc=True,
                            num_rpc_backends=2) as hybrid:
        local = llamacpp(hybrid.pool.router).pool
        assert local is not None and len(local.workers) == 2
        pids = [w.child.pid for w in local.workers]
        reply = await hybrid.route_request(
            "gemma3:270m", [{"role": "user", "content": "Hi"}], max_tokens=4)
        assert await hybrid.should_use_distributed("gemma3:270m")
        coordinator = hybrid.coordinator
        assert coordinator is not None and coordinator["model"] == "gemma3:270m"
        assert len(coordinator["workers"]) == 2 and coordinator["uptime_s"] >= 0
        stats = hybrid.get_stats()
        assert stats["distributed_requests"] == 1 and stats["requests"] == 1
        assert len(stats["active_rpc_backends"]) == 2
        assert len(stats["plugins"]["local_rpc_workers"]) == 2
    assert reply["_routing"]["backend"] == "sharded"
    assert reply["done"] and reply["message"]["role"] == "assistant"
    import psutil
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


async def test_hybrid_router_gguf_path_serves_a_model_the_store_does_not_have(
        gemma: Path, shared_workers: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's usage: one GGUF for the distributed model, whatever the model is called."""
    from sollol_core import HybridRouter, OllamaPool
    from sollol_core.config import PluginSettings
    from sollol_core.plugins import Plugins

    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty-store"))
    await wait_free(shared_workers[:2])
    with pytest.raises(FileNotFoundError, match="gguf_path: no such file"):
        HybridRouter(enable_distributed=True, gguf_path=tmp_path / "missing.gguf")
    pool = OllamaPool(plugins=Plugins.load(PluginSettings(load=("llamacpp",))))
    async with HybridRouter(pool, enable_distributed=True, rpc_backends=[
            {"host": a.split(":")[0], "port": int(a.split(":")[1])} for a in shared_workers[:2]],
            gguf_path=gemma) as hybrid:
        assert await hybrid.should_use_distributed("team/tiny-gemma:latest")
        reply = await hybrid.route_request(
            "team/tiny-gemma:latest", [{"role": "user", "content": "Hi"}], max_tokens=3)
    assert reply["_routing"]["backend"] == "sharded"
    assert "no healthy node holds it whole" in reply["_routing"]["reason"]
    assert reply["done"] and reply["model"] == "team/tiny-gemma:latest"


async def test_a_sharded_coordinator_chats_and_refuses_embeddings_clearly(
        gemma: Path, shared_workers: list[str]) -> None:
    async with router(shared_workers[:2], {"gemma3:270m": gemma}) as r:
        chatted, routing = await r.run(InferenceRequest.chat(
            "gemma3:270m", [{"role": "user", "content": "Hi"}], options={"num_predict": 4}))
        with pytest.raises(BackendError, match="embeddings"):
            await r.run(InferenceRequest.embed("gemma3:270m", ["red", "blue"]))
    assert chatted[-1]["message"]["role"] == "assistant" and chatted[-1]["done"]
    assert routing.backend == "sharded"


def test_a_gguf_without_a_chat_template_gets_llama_cpps_builtin_one(gemma: Path) -> None:
    from sollol_llamacpp.coordinator import fallback_chat_template

    assert fallback_chat_template(gemma) == "gemma"  # no template in this GGUF: llama.cpp's own


async def test_a_loaded_coordinator_calibrates_the_estimate_and_status_shows_it(
        gemma: Path, shared_workers: list[str]) -> None:
    async with router(shared_workers[:2], {"gemma3:270m": gemma}) as r:
        plugin = llamacpp(r)
        assert not plugin.calibration.by_model  # a new router's plugin has learnt nothing yet
        await r.run(raw_generate("gemma3:270m", num_predict=2))
        (correction,) = plugin.sollol_status()["corrections"]
    assert correction["model"] == "gemma3:270m" and correction["worker_kind"] == "rpc"
    # what llama.cpp allocated on the two workers against the estimate: close, not equal
    assert 0.7 < correction["factor"] < 1.4
    assert correction["measured_mib"] > 100
    assert plugin.calibration.factor("gemma3:270m") == correction["factor"]


def test_held_bytes_reads_llama_cpp_load_lines() -> None:
    from sollol_llamacpp.calibration import held_bytes

    log = """
0.00.774.080 I load_tensors:   CPU_Mapped model buffer size =   170.00 MiB
0.00.774.081 I load_tensors: RPC0[127.0.0.1:51901] model buffer size =    35.82 MiB
0.00.774.082 I load_tensors: RPC0[127.0.0.1:51902] model buffer size =   199.34 MiB
0.01.292.788 I llama_kv_cache: RPC0[127.0.0.1:51901] KV buffer size =     1.00 MiB
0.01.294.818 I llama_kv_cache: RPC0[127.0.0.1:51902] KV buffer size =     6.00 MiB
0.01.303.268 I sched_reserve: RPC0[127.0.0.1:51901] compute buffer size =    40.84 MiB
"""
    held = held_bytes(log)
    assert held == {"127.0.0.1:51901": int(35.82 * 2**20) + 2**20 + int(40.84 * 2**20),
                    "127.0.0.1:51902": int(199.34 * 2**20) + 6 * 2**20}
