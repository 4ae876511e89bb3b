"""How many requests each Ollama node serves at once: configured per node (``OLLAMA_NODES``'s
``=N``, ``[ollama] slots``), else the plugin's setting, corrected by what the node's answers
show (it queued, or said "server busy"); ``sollol discover`` says which."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sollol_ollama.settings import OllamaSettings
from sollol_ollama.testing import CostModel, OllamaEmulator

from sollol_core import OllamaPool
from sollol_core.capacity import WAIT_NS, queued_ns
from sollol_core.config import Settings
from sollol_core.errors import ConfigError

HI = [{"role": "user", "content": "hi"}]
SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


async def sollol(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it (in a thread: emulators serve meanwhile)."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("SOLLOL_") and k not in {"RPC_BACKENDS", "OLLAMA_NODES"}}
    return await asyncio.to_thread(subprocess.run, [SOLLOL, *args], capture_output=True,
                                   text=True, timeout=60, env={**clean, **env})


def test_slots_per_node_from_the_node_list_and_the_table(tmp_path: Path) -> None:
    config = tmp_path / "sollol.toml"
    config.write_text('[ollama]\nslots = {"10.0.0.7" = 8}\n')
    settings = Settings.load(config_path=config,
                             environ={"OLLAMA_NODES": "10.0.0.5:11434=4,10.0.0.6,10.0.0.7"})
    own = settings.section(OllamaSettings)
    assert own.addresses() == ("10.0.0.5:11434", "10.0.0.6", "10.0.0.7")
    assert own.slots_for("10.0.0.5") == 4 and own.slots_for("10.0.0.7:11434") == 8
    assert own.slots_for("10.0.0.6:11434") is None


@pytest.mark.parametrize("nodes", ["10.0.0.5:11434=four", "10.0.0.5=0"])
async def test_a_bad_slot_count_is_named(nodes: str) -> None:
    with pytest.raises(ConfigError, match=r"ollama\.nodes"):
        Settings.load(environ={"OLLAMA_NODES": nodes})
    result = await sollol("discover", OLLAMA_NODES=nodes)
    assert result.returncode == 2 and "OLLAMA_NODES: ollama.nodes" in result.stderr


async def test_discover_shows_each_nodes_slots_and_where_they_come_from() -> None:
    async with OllamaEmulator(name="a") as a, OllamaEmulator(name="b") as b:
        result = await sollol("discover", OLLAMA_NODES=f"{a.address}=4,{b.address}",
                              SOLLOL_LOAD_PLUGINS="ollama", COLUMNS="250")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines()
            if a.address in line or b.address in line}
    assert "0/4 (configured)" in rows[f"ollama://{a.address}"], result.stdout
    assert "0/1 (setting)" in rows[f"ollama://{b.address}"], result.stdout


async def test_a_node_that_queues_is_learnt_to_serve_fewer() -> None:
    """SOLLOL is told every node serves 4 at once; this one serves 1: the requests that waited
    inside it teach SOLLOL its number, and later ones wait in SOLLOL's queue instead."""
    cost = CostModel(prefill_tokens_per_s=10_000, output_tokens=10)
    async with OllamaEmulator(name="one", parallel=1, tokens_per_s=100, cost=cost) as node:
        settings = Settings.load(environ={"OLLAMA_NODES": node.address,
                                          "SOLLOL_OLLAMA_PARALLEL": "4",
                                          "SOLLOL_LOAD_PLUGINS": "ollama"})
        async with OllamaPool(settings=settings) as pool:
            key = f"ollama://{node.address}"
            assert pool.router.fleet.node(key).parallel == 4  # type: ignore[union-attr]
            await asyncio.gather(*(pool.chat("llama3.2", HI) for _ in range(3)))
            learnt = pool.router.fleet.node(key)
            assert learnt is not None
            assert (learnt.parallel, learnt.slots_source) == (1, "learned")
            await pool.router.fleet.refresh()  # a probe does not undo what was learnt
            assert pool.router.fleet.node(key).parallel == 1  # type: ignore[union-attr]
            later = await asyncio.gather(*(pool.chat("llama3.2", HI) for _ in range(2)))
            # neither queued inside the node now: the second waited in SOLLOL's own queue
            assert all(queued_ns(r) < WAIT_NS for r in later)  # type: ignore[operator]
            assert max(r["_routing"]["queue_ms"] for r in later) > 50


async def test_a_node_that_says_server_busy_is_learnt_to_serve_fewer() -> None:
    async with OllamaEmulator(name="busy", parallel=1, max_queue=0, tokens_per_s=50) as node:
        settings = Settings.load(environ={"OLLAMA_NODES": node.address,
                                          "SOLLOL_OLLAMA_PARALLEL": "2",
                                          "SOLLOL_LOAD_PLUGINS": "ollama"})
        async with OllamaPool(settings=settings) as pool:
            results = await asyncio.gather(*(pool.chat("llama3.2", HI) for _ in range(2)),
                                           return_exceptions=True)
            assert any(isinstance(r, Exception) for r in results)  # one got 503: one node
            learnt = pool.router.fleet.node(f"ollama://{node.address}")
            assert learnt is not None
            assert (learnt.parallel, learnt.slots_source) == (1, "learned")

