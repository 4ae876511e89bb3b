"""The ``sollol`` package's llama.cpp side, as the SOLLOL guide uses it, with real RPC workers
and a real coordinator: ``test_rpc_backend``, ``OllamaGGUFResolver``, and a sharded request whose
``_routing`` and ``router.coordinator`` read as the guide prints them."""

from __future__ import annotations

import socket
from pathlib import Path

from sollol_llamacpp.binaries import Binaries

from sollol import HybridRouter, OllamaPool
from sollol.ollama_gguf_resolver import OllamaGGUFResolver
from sollol.rpc_discovery import test_rpc_backend
from sollol_core.config import Settings

from .test_ollama_store import add_model


def only_llamacpp(tmp_path: Path, **environ: str) -> Settings:
    """Only the llama.cpp plugin, only the workers a test names, and no Ollama store."""
    return Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "llamacpp",
                                  "SOLLOL_IMPLICIT_NODES": "false",
                                  "OLLAMA_MODELS": str(tmp_path / "no-store"), **environ})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rpc_backend_answers_for_a_real_worker_only(shared_workers: list[str]) -> None:
    host, port = shared_workers[0].split(":")
    assert test_rpc_backend(host, int(port)) is True
    assert test_rpc_backend("127.0.0.1", closed_port()) is False


def test_the_resolver_finds_a_model_in_the_ollama_store(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_model(root, "registry.ollama.ai", "library", "llama3.1", "70b")
    resolver = OllamaGGUFResolver(environ={"OLLAMA_MODELS": str(root),
                                           "HOME": str(tmp_path / "home")})
    path = resolver.get_gguf_path("llama3.1:70b")
    assert path is not None and Path(path).read_bytes()[:4] == b"GGUF"
    assert resolver.get_gguf_path("llama3.1:405b") is None


async def test_a_sharded_request_reads_as_the_guide_prints_it(
        gemma: Path, shared_workers: list[str], tmp_path: Path) -> None:
    settings = only_llamacpp(tmp_path)
    router = HybridRouter(ollama_pool=OllamaPool(settings=settings), enable_distributed=True,
                          rpc_backends=[{"host": "127.0.0.1", "port": int(w.split(":")[1])}
                                        for w in shared_workers[:2]],
                          gguf_path=str(gemma))
    try:
        response = await router.route_request(
            model="gemma3:270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        routing = response["_routing"]
        assert f"Backend: {routing['backend']}" == "Backend: llama.cpp-distributed"
        coordinator = router.coordinator
        assert coordinator is not None and coordinator.is_running()
        assert routing["coordinator_url"] == coordinator.base_url
        assert router.coordinator_model == "gemma3:270m"
        assert len(coordinator.rpc_backends) == 2
        assert {f"{b['host']}:{b['port']}" for b in coordinator.rpc_backends} == set(
            shared_workers[:2])
        stats = router.get_stats()
        assert stats["distributed_requests"] == 1 and stats["active_rpc_backends"] == 2
        assert stats["coordinator_uptime_seconds"] >= 0
    finally:
        await router.close()
    assert router.coordinator is None  # stopped with the router


async def test_asking_for_three_backends_splits_over_three(
        gemma: Path, shared_workers: list[str], tmp_path: Path) -> None:
    settings = only_llamacpp(tmp_path)
    router = HybridRouter(ollama_pool=OllamaPool(settings=settings), enable_distributed=True,
                          rpc_backends=list(shared_workers), num_rpc_backends=3,
                          gguf_path=str(gemma))
    try:
        response = await router.route_request(
            model="gemma3:270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert "over 3 RPC workers" in response["_routing"]["reason"]
        assert router.coordinator is not None and len(router.coordinator.rpc_backends) == 3
    finally:
        await router.close()


async def test_llama_arg_n_gpu_layers_as_the_guide_exports_it_sets_the_coordinators_ngl(
        gemma: Path, shared_workers: list[str], tmp_path: Path) -> None:
    import psutil

    settings = only_llamacpp(tmp_path, **{"LLAMA_ARG_N_GPU_LAYERS": "6"})
    router = HybridRouter(ollama_pool=OllamaPool(settings=settings), enable_distributed=True,
                          rpc_backends=list(shared_workers[:2]), gguf_path=str(gemma))
    try:
        response = await router.route_request(
            model="gemma3:270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert response["_routing"]["backend"] == "llama.cpp-distributed"
        assert router.coordinator is not None
        argv = psutil.Process(router.coordinator.pid).cmdline()
        assert argv[argv.index("-ngl") + 1] == "6"
    finally:
        await router.close()


async def test_auto_discover_rpc_finds_the_workers_running_here(
        gemma: Path, binaries: Binaries, tmp_path: Path) -> None:
    from sollol_llamacpp.workers import WorkerPool

    pool = WorkerPool(binaries)
    started = await pool.start(2, first_port=50056)  # "50052 and up", as the guide's servers
    try:
        settings = only_llamacpp(tmp_path)
        router = HybridRouter(ollama_pool=OllamaPool(settings=settings), enable_distributed=True,
                              auto_discover_rpc=True, num_rpc_backends=2, gguf_path=str(gemma))
        try:
            response = await router.route_request(
                model="gemma3:270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
            assert response["_routing"]["backend"] == "llama.cpp-distributed"
            assert router.coordinator is not None
            used = {f"{b['host']}:{b['port']}" for b in router.coordinator.rpc_backends}
            assert used == {e.address for e in started}
        finally:
            await router.close()
    finally:
        await pool.stop()
