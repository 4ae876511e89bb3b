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
    assert ran[3]["reason"].startswith("earliest end of 2 holding the model: expected first token")
    assert "12 tokens at " in ran[3]["reason"]


async def test_each_conversations_next_turn_goes_where_its_prompt_is_cached() -> None:
    """Two equal nodes, slow at prefill: after both are measured, each conversation's later
    turns return to the node holding it, and that node evaluates only the new words."""
    cost = CostModel(prefill_tokens_per_s=2_000, output_tokens=8)
    async with OllamaEmulator(name="a", tokens_per_s=400, parallel=2, cost=cost) as a, \
            OllamaEmulator(name="b", tokens_per_s=400, parallel=2, cost=cost) as b:
        # each node's two slots are said: SOLLOL believes a node holds that many conversations
        settings = Settings.load(environ={"OLLAMA_NODES": f"{a.address}=2,{b.address}=2",
                                          "SOLLOL_LOAD_PLUGINS": "ollama"})
        async with OllamaPool(settings=settings) as pool:
            for warm in range(2):  # both nodes measured
                await pool.chat("llama3.2", [{"role": "user", "content": f"warm {warm}"}])
            chats = {name: [{"role": "user", "content": f"{name}: " + "long context " * 400}]
                     for name in ("x", "y")}
            homes: dict[str, list[str]] = {"x": [], "y": []}
            evaluated: list[int] = []
            for _ in range(3):
                for name, history in chats.items():
                    reply = await pool.chat("llama3.2", history)
                    homes[name].append(reply["_routing"]["node"])
                    evaluated.append(reply["prompt_eval_count"])
                    history += [reply["message"],
                                {"role": "user", "content": "and then?"}]
    for name, nodes in homes.items():
        assert len(set(nodes[1:])) == 1 and nodes[1] == nodes[0], (name, homes)
    # later turns evaluate a few new tokens, not the whole conversation again
    assert max(evaluated[2:]) < 20 < min(evaluated[:2]), evaluated
