"""The ``sollol`` package: the imports, names and shapes the SOLLOL guide uses, over static
nodes (the llama.cpp parts run for real in plugins/sollol-llamacpp/tests/test_seed_api.py)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import sollol
from sollol import MODEL_PROFILES, HybridRouter, OllamaPool
from sollol.priority_helpers import Priority, get_priority_for_role
from sollol_core.config import PluginSettings
from sollol_core.errors import NoRouteError
from sollol_core.plugins import Plugins
from sollol_core.testing import StaticBackend, node

HI = [{"role": "user", "content": "Hello!"}]


def plugins() -> Plugins:
    return Plugins.load(PluginSettings(load=()), extra=[
        ("static", StaticBackend([node("a", models=["llama3.2"])]))])


def test_every_module_the_guide_imports_is_there() -> None:
    from sollol.hybrid_router import MODEL_PROFILES as profiles
    from sollol.ollama_gguf_resolver import OllamaGGUFResolver
    from sollol.rpc_discovery import test_rpc_backend
    from sollol.sync_wrapper import HybridRouter as SyncRouter
    from sollol.sync_wrapper import OllamaPool as SyncPool

    assert profiles is MODEL_PROFILES and callable(test_rpc_backend)
    assert callable(OllamaGGUFResolver().get_gguf_path)
    assert SyncRouter and SyncPool and sollol.OllamaPool is OllamaPool


def test_priorities_by_name_and_by_role() -> None:
    assert (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.BATCH) == (10, 7, 5, 1)
    assert get_priority_for_role("researcher") == Priority.HIGH
    assert get_priority_for_role("Summarizer") == Priority.LOW
    assert get_priority_for_role("juggler") == Priority.NORMAL


def test_model_profiles_are_the_guides_and_extendable() -> None:
    assert MODEL_PROFILES["llama3.1:70b"] == {"parameter_count": 70, "estimated_memory_gb": 40,
                                              "requires_distributed": True}
    MODEL_PROFILES["custom-70b"] = {"parameter_count": 70, "estimated_memory_gb": 42,
                                    "requires_distributed": True}
    try:
        assert "custom-70b" in sollol.MODEL_PROFILES
    finally:
        del MODEL_PROFILES["custom-70b"]


async def test_a_request_on_a_pool_node_says_ollama_pool_as_the_guide_prints() -> None:
    router = HybridRouter(ollama_pool=OllamaPool(plugins=plugins()), enable_distributed=True)
    try:
        response = await router.route_request(model="llama3.2", messages=HI,
                                              priority=Priority.HIGH)
        routing: dict[str, Any] = response["_routing"]
        assert routing["backend"] == "ollama-pool"
        assert routing["node"] == "a:11434" and routing["node_kind"] == "static"
        assert routing["reason"] and "duration_ms" in routing and "coordinator_url" not in routing
        stats = router.get_stats()
        assert stats["distributed_requests"] == 0 and stats["active_rpc_backends"] == 0
        assert stats["coordinator_uptime_seconds"] == 0 and router.coordinator is None
        assert router.coordinator_model is None
    finally:
        await router.close()


async def test_auto_configure_is_awaitable_and_can_also_be_handed_over_unstarted() -> None:
    pool = await OllamaPool.auto_configure(plugins=plugins())
    try:
        assert pool.started
    finally:
        await pool.close()
    router = HybridRouter(ollama_pool=OllamaPool.auto_configure(plugins=plugins()))
    try:
        assert (await router.route_request("llama3.2", HI))["_routing"]["backend"] == "ollama-pool"
    finally:
        await router.close()


async def test_model_filter_is_honoured() -> None:
    router = HybridRouter(ollama_pool=OllamaPool(plugins=plugins()), enable_distributed=True,
                          model_filter=["llama3.1:70b"])
    try:
        assert await router.should_use_distributed("llama3.2") is False
        with pytest.raises(ValueError, match=r"serves llama3\.1:70b only \(model_filter\)"):
            await router.route_request("llama3.2", HI)
    finally:
        await router.close()


def test_the_sync_wrapper_prints_what_the_guide_prints() -> None:
    from sollol.sync_wrapper import HybridRouter as SyncRouter
    from sollol.sync_wrapper import OllamaPool as SyncPool

    router = SyncRouter(ollama_pool=SyncPool(plugins=plugins()), enable_distributed=True)
    try:
        response = router.route_request(model="llama3.2", messages=HI, priority=Priority.HIGH)
        assert f"Backend: {response.get('_routing', {}).get('backend')}" == "Backend: ollama-pool"
        assert router.coordinator is None and router.coordinator_model is None
        assert router.get_stats()["active_rpc_backends"] == 0
    finally:
        router.close()


def test_python_m_sollol_gateway_is_sollol_serve() -> None:
    done = subprocess.run([sys.executable, "-m", "sollol.gateway", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Run the gateway until Ctrl-C" in done.stdout and "--port" in done.stdout


def test_a_missing_plugin_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    from sollol.rpc_discovery import test_rpc_backend

    monkeypatch.setitem(sys.modules, "sollol_llamacpp.rpc_probe", None)
    with pytest.raises(ImportError, match="pip install sollol-llamacpp"):
        test_rpc_backend("127.0.0.1", 50052)


async def test_model_profiles_decide_for_models_with_no_gguf_here() -> None:
    router = HybridRouter(ollama_pool=OllamaPool(plugins=plugins()), enable_distributed=True)
    try:
        assert await router.should_use_distributed("llama3.1:70b") is True  # its profile
        assert await router.should_use_distributed("llama3.1:8b") is False
        assert await router.should_use_distributed("llama3.2") is False  # on node a: placement
        assert await router.should_use_distributed("mystery") is False  # no profile
        MODEL_PROFILES["custom-70b"] = {"parameter_count": 70, "estimated_memory_gb": 42,
                                        "requires_distributed": True}
        try:
            assert await router.should_use_distributed("custom-70b") is True
        finally:
            del MODEL_PROFILES["custom-70b"]
    finally:
        await router.close()
    small = HybridRouter(ollama_pool=OllamaPool(plugins=plugins()), enable_distributed=True,
                         distributed_threshold_params=5)
    try:
        assert await small.should_use_distributed("llama3.1:8b") is True  # 8B over 5B
    finally:
        await small.close()


async def test_a_model_with_no_gguf_anywhere_says_which_file_and_the_three_ways() -> None:
    router = HybridRouter(ollama_pool=OllamaPool(plugins=plugins()), enable_distributed=True)
    try:
        with pytest.raises(NoRouteError) as refused:
            await router.route_request("llama3.1:70b", HI)
    finally:
        await router.close()
    message = str(refused.value)
    assert "no GGUF file for it" in message and "ollama pull llama3.1:70b" in message
    assert '[llamacpp] models = {"llama3.1:70b" = "/path/to/model.gguf"}' in message
    assert "gguf_path=" in message
