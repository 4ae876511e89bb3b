"""Benchmark: one routing decision through the plugin manager.

Measures ``Plugins.place(request, fleet)`` -- the ``sollol_place`` hook call a request makes,
answered by the built-in policy only -- on made-up fleets of 10, 100 and 1000 nodes, first with no
measurements (free room decides), then with every node's prefill and decode rates measured (the
policy predicts each node's time), then also with the prompt-cache index full (200,000 prefixes,
a quarter of the nodes holding part of this request's prompt): each call then also looks the
request up in the index and adds what it found to the snapshot, as ``Router.decide`` does. Each
call is
timed on its own with ``time.perf_counter_ns`` after a warm-up; p50, p99 and mean are reported in
microseconds, printed as a table and written as JSON (``benchmarks/results/placement.json`` unless
``--output`` says otherwise). Every size checks once that the decision is sane, so a broken policy
cannot give a fast but wrong figure.

The figures are compared with their targets in docs/benchmarks.md, not in tests: timings depend on
the machine and would make the test suite flaky.

    python benchmarks/placement.py [--quick] [--output PATH]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from attrs import evolve
from report import environment, percentile, write  # the benchmarks folder is on sys.path

from sollol_core.affinity import AffinityIndex, PromptCache, prefixes
from sollol_core.config import PluginSettings
from sollol_core.plugins import Plugins
from sollol_core.testing import fleet, node
from sollol_core.types import FleetSnapshot, Health, InferenceRequest, Performance

SIZES = (10, 100, 1000)
MODEL = "m"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "placement.json"


def make_fleet(size: int) -> FleetSnapshot:
    """``size`` nodes: most hold ``MODEL``, busy 0..3 of 4, 1..50 ms; a few lack it or are down."""
    nodes = []
    for i in range(size):
        others = [f"other-{i % 5}", f"other-{(i + 2) % 7}"]
        models = others if i % 9 == 4 else [MODEL, *others]
        nodes.append(node(
            f"n{i}", models=models, loaded=[MODEL] if i % 3 == 0 and MODEL in models else [],
            in_flight=i % 4, parallel=4, latency_ms=float(1 + (i * 7) % 50),
            health=Health.DOWN if i % 13 == 6 else Health.UP))
    return fleet(*nodes)


def with_measurements(snapshot: FleetSnapshot) -> FleetSnapshot:
    """Every node's rates for ``MODEL`` measured (as after a while in service)."""
    return evolve(snapshot, performance=tuple(
        Performance(node=n.endpoint.key, model=MODEL, latency_ms=200.0 + i % 40 * 10,
                    tokens_per_s=20.0 + i % 17 * 5, samples=10,
                    prefill_tokens_per_s=500.0 + i % 11 * 200, load_ms=3000.0,
                    output_tokens=120.0)
        for i, n in enumerate(snapshot.nodes)))


def check(plugins: Plugins, request: InferenceRequest, snapshot: FleetSnapshot) -> None:
    decision = plugins.place(request, snapshot)
    assert decision is not None and decision.target is not None, decision
    chosen = snapshot.node(decision.target.key)
    assert chosen is not None and chosen.health is Health.UP and chosen.holds(MODEL), decision


def full_index(snapshot: FleetSnapshot, request: InferenceRequest) -> AffinityIndex:
    """200,000 prefixes of other conversations (50,000 other nodes' 4 slots each: a node holds
    no more conversations than it has slots), and this request's first messages on a quarter of
    the nodes."""
    index = AffinityIndex()
    for i in range(200_000):
        index.record(f"other-{i % 50_000}", ((i, 10.0),), slots=4, now=0.0)
    steps = prefixes(request)
    for n in snapshot.nodes[::4]:
        index.record(n.endpoint.key, steps[:2], slots=4, now=0.0)
    assert len(index) == index.max_entries, len(index)  # full
    return index


def measure(plugins: Plugins, size: int, calls: int, measured: bool,
            cached: bool = False) -> dict[str, Any]:
    snapshot = with_measurements(make_fleet(size)) if measured else make_fleet(size)
    request = InferenceRequest.chat(MODEL, [
        {"role": "system", "content": "Be brief. " * 40},
        {"role": "user", "content": "Hello " * 50}, {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "And now? " * 10}])
    index = full_index(snapshot, request) if cached else None
    steps = prefixes(request)

    def decide() -> None:
        fleet = snapshot
        if index is not None:
            found = index.lookup(steps, now=1.0)
            if found is not None:
                fleet = evolve(fleet, facts={**fleet.facts, PromptCache: found})
        plugins.place(request, fleet)

    check(plugins, request, snapshot)
    for _ in range(max(calls // 10, 5)):
        decide()
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(calls):
            start = clock()
            decide()
            samples.append(clock() - start)
    finally:
        gc.enable()
    mean = statistics.fmean(samples)
    return {"nodes": size, "measured": measured, "prompt_cache": cached, "calls": calls,
            "p50_us": round(percentile(samples, 50) / 1000, 2),
            "p99_us": round(percentile(samples, 99) / 1000, 2), "mean_us": round(mean / 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    args = parser.parse_args(argv)

    calls = 200 if args.quick else 2000
    # An empty allow-list: entry-point plugins stay out, the built-in policy answers alone.
    plugins = Plugins.load(PluginSettings(load=()))
    results = []
    for measured, cached in ((False, False), (True, False), (True, True)):
        for size in SIZES:
            print(f"placement: {size} nodes{', measured' if measured else ''}"
                  f"{', prompt-cache index full' if cached else ''}, {calls} calls...",
                  file=sys.stderr, flush=True)
            results.append(measure(plugins, size, calls, measured, cached))

    print(f"{'nodes':>6} {'measured':>9} {'cache':>6} {'calls':>6} {'p50 us':>10} {'p99 us':>10} "
          f"{'mean us':>10}")
    for r in results:
        print(f"{r['nodes']:>6} {r['measured']!s:>9} {r['prompt_cache']!s:>6} {r['calls']:>6} "
              f"{r['p50_us']:>10.2f} {r['p99_us']:>10.2f} {r['mean_us']:>10.2f}")

    write(args.output, {"benchmark": "placement", **environment(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
