"""Placement by predicted time against real Ollama-API nodes (emulators with a cost model)."""

from __future__ import annotations

from sollol_ollama.testing import CostModel, OllamaEmulator

from sollol_core import OllamaPool
from sollol_core.config import Settings

HI = [{"role": "user", "content": "hi"}]


async def test_once_both_are_measured_requests_go_where_they_end_first() -> None:
    """Two nodes, one ten times faster at generating; SOLLOL measures both (the second is
    tried because it is unmeasured), then sends each request to the fast one, saying why."""
    cost = CostModel(prefill_tokens_per_s=5_000, output_tokens=12)
    async with OllamaEmulator(name="fast", tokens_per_s=400, cost=cost) as fast, \
            OllamaEmulator(name="slow", tokens_per_s=40, cost=cost) as slow:
        settings = Settings.load(environ={"OLLAMA_NODES": f"{fast.address},{slow.address}",
                                          "SOLLOL_LOAD_PLUGINS": "ollama"})
        async with OllamaPool(settings=settings) as pool:
            ran = [(await pool.chat("llama3.2", HI))["_routing"] for _ in range(4)]
    assert {r["node"] for r in ran[:2]} == {fast.address, slow.address}
    assert [r["node"] for r in ran[2:]] == [fast.address, fast.address]
    assert ran[3]["reason"].startswith("earliest of 2 holding the model: expected first token")
    assert "12 tokens at " in ran[3]["reason"]
