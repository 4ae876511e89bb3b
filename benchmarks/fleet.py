"""Benchmark: routing decisions on a heterogeneous fleet, against the routers users pick instead.

Four emulated Ollama nodes with the emulator's cost model (prefill time for what a slot does not
hold, a per-slot prompt cache, decode speed), unlike each other:

    fast   4 slots  240 tok/s decode  6,000 tok/s prefill
    mid-a  2 slots  120 tok/s         3,000 tok/s
    mid-b  2 slots  120 tok/s         3,000 tok/s
    slow   1 slot    50 tok/s         1,000 tok/s

A seeded multi-tenant, multi-turn chat workload: each conversation loop belongs to one of 8
tenants (each with its own 600-word system prompt), sends a turn (40 words), waits for the whole
streamed reply, thinks (exponential, mean 1 s) and sends the next turn with the reply and the new
message appended; after 4 turns it starts a new conversation. Load is the number of loops at
once: ``moderate`` (6: about half the fleet's slots busy) and ``saturated`` (24). Every router
gets fresh nodes (cold caches) and the same seeds.

Routers: ``sollol`` (the Python API, every node's slots configured, as a user would),
``random``, ``round-robin``, ``least-connections`` (fewest requests in flight, as nginx
``least_conn`` and LiteLLM's ``least-busy``), and ``reference`` (earliest predicted end with full
knowledge of every node's true speeds, slots, queue and slot caches: what a perfect router could
do). Baselines send straight to the nodes (no proxy cost); SOLLOL pays its own.

Reported per load and router: TTFT p50/p99, latency p50/p99, output tokens/s, prompt tokens
served from a node's cache, and each node's share of requests. Targets (issue 13) are checked
and printed; figures go to ``benchmarks/results/fleet.json``.

    python benchmarks/fleet.py [--quick] [--seconds S] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from report import environment, percentile, write  # the benchmarks folder is on sys.path
from sollol_ollama.testing import CostModel, OllamaEmulator
from sollol_ollama.testing.cost import chat_tokens, common_prefix

from sollol_core import OllamaPool
from sollol_core.config import Settings
from sollol_core.types import InferenceRequest

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "fleet.json"
MODEL = "llama3.2"
OUTPUT_TOKENS = 24
LOADS = {"moderate": 6, "saturated": 24}
ROUTERS = ("sollol", "random", "round-robin", "least-connections", "reference")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    slots: int
    decode: float
    prefill: float


NODES = (NodeSpec("fast", 4, 240.0, 6000.0), NodeSpec("mid-a", 2, 120.0, 3000.0),
         NodeSpec("mid-b", 2, 120.0, 3000.0), NodeSpec("slow", 1, 50.0, 1000.0))


@dataclass
class Result:
    node: str
    ttft_s: float
    latency_s: float
    output_tokens: int
    prompt_tokens: int
    evaluated: int


class Direct:
    """A baseline: picks a node by its rule and sends straight to it."""

    def __init__(self, rule: str, nodes: Sequence[OllamaEmulator], seed: int) -> None:
        self.rule, self.nodes = rule, list(nodes)
        self.in_flight = Counter[str]()
        self.random = random.Random(seed)
        self.turn = itertools.count()
        self.specs = {n.name: s for n, s in zip(nodes, NODES, strict=True)}
        self.session: aiohttp.ClientSession | None = None

    def pick(self, messages: list[dict[str, str]]) -> OllamaEmulator:
        if self.rule == "random":
            return self.random.choice(self.nodes)
        if self.rule == "round-robin":
            return self.nodes[next(self.turn) % len(self.nodes)]
        if self.rule == "least-connections":
            return min(self.nodes, key=lambda n: self.in_flight[n.name])
        return min(self.nodes, key=lambda n: self.predicted_end(n, messages))

    def predicted_end(self, node: OllamaEmulator, messages: list[dict[str, str]]) -> float:
        """The reference: the node's true speeds, slots, queue and slot caches."""
        spec, tokens = self.specs[node.name], chat_tokens(messages)
        free = [i for i, taken in enumerate(node._slot_cache.taken) if not taken]
        cached = max((common_prefix(node._slot_cache.memory[i], tokens) for i in free),
                     default=0)
        service = OUTPUT_TOKENS / spec.decode + len(tokens) / spec.prefill
        ahead = self.in_flight[node.name] - spec.slots + 1
        wait = ahead * service / spec.slots if ahead > 0 else 0.0
        return wait + (len(tokens) - cached) / spec.prefill + OUTPUT_TOKENS / spec.decode

    async def chat(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any], float,
                                                                  str]:
        node = self.pick(messages)
        assert self.session is not None
        self.in_flight[node.name] += 1
        try:
            started, first, text, final = time.monotonic(), None, [], {}
            async with self.session.post(f"{node.url}/api/chat", json={
                    "model": MODEL, "messages": messages, "stream": True}) as response:
                async for line in response.content:
                    chunk = json.loads(line)
                    first = first or time.monotonic()
                    text.append(chunk.get("message", {}).get("content", ""))
                    final = chunk
            return node.name, final, (first or time.monotonic()) - started, "".join(text)
        finally:
            self.in_flight[node.name] -= 1


class Sollol:
    """SOLLOL's Python API over the same nodes, each node's slots configured."""

    def __init__(self, nodes: Sequence[OllamaEmulator]) -> None:
        self.names = {f"ollama://{n.address}": n.name for n in nodes}
        listed = ",".join(f"{n.address}={s.slots}" for n, s in zip(nodes, NODES, strict=True))
        self.pool = OllamaPool(settings=Settings.load(environ={
            "OLLAMA_NODES": listed, "SOLLOL_LOAD_PLUGINS": "ollama"}))

    async def chat(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any], float,
                                                                  str]:
        started, first, text = time.monotonic(), None, []
        final: dict[str, Any] = {}
        await self.pool.start()
        reply = await self.pool.router.open(InferenceRequest.chat(MODEL, list(messages),
                                                                  stream=True))
        async for chunk in reply:
            first = first or time.monotonic()
            text.append(chunk.get("message", {}).get("content", ""))
            final = dict(chunk)
        target = reply.decision.target
        node = self.names.get(target.key, "?") if target is not None else "?"
        return node, final, (first or time.monotonic()) - started, "".join(text)


def system_prompt(tenant: int) -> str:
    words = random.Random(tenant).choices(["alpha", "beta", "gamma", "delta", "omega"], k=600)
    return f"tenant {tenant}: " + " ".join(words)


async def conversation_loop(index: int, chat: Callable[..., Any], until: float,
                            results: list[Result]) -> None:
    rng = random.Random(1000 + index)
    while time.monotonic() < until:
        tenant = rng.randrange(8)
        history = [{"role": "system", "content": system_prompt(tenant)}]
        for _ in range(4):
            await asyncio.sleep(rng.expovariate(1.0))
            if time.monotonic() >= until:
                return
            words = " ".join(rng.choices(["why", "how", "what", "if", "then", "so"], k=40))
            history.append({"role": "user", "content": words})
            started = time.monotonic()
            node, final, ttft, text = await chat(history)
            results.append(Result(node, ttft, time.monotonic() - started,
                                  int(final.get("eval_count") or 0), len(chat_tokens(history)),
                                  int(final.get("prompt_eval_count") or 0)))
            history.append({"role": "assistant", "content": text})


async def run(router: str, loops: int, seconds: float) -> dict[str, Any]:
    cost = [CostModel(prefill_tokens_per_s=s.prefill, output_tokens=OUTPUT_TOKENS) for s in NODES]
    nodes = [OllamaEmulator(name=s.name, parallel=s.slots, tokens_per_s=s.decode, cost=c)
             for s, c in zip(NODES, cost, strict=True)]
    for node in nodes:
        await node.start()
    results: list[Result] = []
    try:
        if router == "sollol":
            sollol = Sollol(nodes)
            await sollol.pool.start()
            chat: Callable[..., Any] = sollol.chat
        else:
            direct = Direct(router, nodes, seed=7)
            direct.session = aiohttp.ClientSession()
            chat = direct.chat
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(*(conversation_loop(i, chat, until, results)
                               for i in range(loops)))
        elapsed = time.monotonic() - started
    finally:
        if router == "sollol":
            await sollol.pool.close()
        else:
            assert direct.session is not None
            await direct.session.close()
        for node in nodes:
            await node.stop()
    ttft = [r.ttft_s * 1000 for r in results]
    latency = [r.latency_s * 1000 for r in results]
    prompt = sum(r.prompt_tokens for r in results)
    shares = Counter(r.node for r in results)
    return {
        "router": router, "loops": loops, "requests": len(results),
        "ttft_p50_ms": round(percentile(ttft, 50), 1),
        "ttft_p99_ms": round(percentile(ttft, 99), 1),
        "latency_p50_ms": round(percentile(latency, 50), 1),
        "latency_p99_ms": round(percentile(latency, 99), 1),
        "output_tokens_per_s": round(sum(r.output_tokens for r in results) / elapsed, 1),
        "cached_prompt_share": round(1 - sum(r.evaluated for r in results) / prompt, 3)
        if prompt else 0.0,
        "node_share": {n.name: round(shares[n.name] / max(len(results), 1), 3) for n in NODES},
    }


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 13's targets, at each load, against least-connections and the reference."""
    lines = []
    for load in LOADS:
        by = {r["router"]: r for r in rows if r["load"] == load}
        s, lc, ref = by["sollol"], by["least-connections"], by["reference"]
        checks = [
            ("TTFT p50 <= 0.75x least-connections", s["ttft_p50_ms"] <= 0.75 * lc["ttft_p50_ms"]),
            ("TTFT p99 <= 0.75x least-connections", s["ttft_p99_ms"] <= 0.75 * lc["ttft_p99_ms"]),
            ("output tok/s >= least-connections",
             s["output_tokens_per_s"] >= lc["output_tokens_per_s"]),
            ("cached prompt share >= 2x least-connections",
             s["cached_prompt_share"] >= 2 * lc["cached_prompt_share"]),
        ]
        if load == "saturated":
            checks.append(("output tok/s >= 0.9x reference",
                           s["output_tokens_per_s"] >= 0.9 * ref["output_tokens_per_s"]))
        lines += [f"{load}: {name}: {'met' if ok else 'NOT met'}" for name, ok in checks]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s per run (a smoke run)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    rows = []
    for load, loops in LOADS.items():
        for router in ROUTERS:
            print(f"fleet: {load} ({loops} conversations), {router}, {seconds:g} s...",
                  file=sys.stderr, flush=True)
            rows.append({"load": load, **asyncio.run(run(router, loops, seconds))})
    print(f"{'load':<10} {'router':<18} {'reqs':>5} {'ttft p50':>9} {'p99':>8} {'lat p50':>8} "
          f"{'p99':>8} {'out tok/s':>9} {'cached':>7}  share fast/mid-a/mid-b/slow")
    for r in rows:
        share = "/".join(f"{v:.2f}" for v in r["node_share"].values())
        print(f"{r['load']:<10} {r['router']:<18} {r['requests']:>5} {r['ttft_p50_ms']:>9.0f} "
              f"{r['ttft_p99_ms']:>8.0f} {r['latency_p50_ms']:>8.0f} {r['latency_p99_ms']:>8.0f} "
              f"{r['output_tokens_per_s']:>9.1f} {r['cached_prompt_share']:>7.2f}  {share}")
    checked = targets(rows)
    for line in checked:
        print(f"target {line}")
    write(args.output, {"benchmark": "fleet", **environment(), "seconds": seconds,
                        "nodes": [vars(n) for n in NODES], "results": rows, "targets": checked})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
