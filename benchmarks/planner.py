"""Benchmark: one shard plan (``sollol_llamacpp.planner.plan_shards``).

Plans a 128-layer model over made-up fleets of 8 and 64 RPC workers, with both strategies. The
inputs vary from call to call (a fixed seed makes them the same on every run): 2 GiB to 8, 16 or
48 GiB free per worker, 0.1-5 ms rtt, a model that needs 15-90% of the fleet's usable memory with
layers of at most 3 GiB (every sixth one heavier: a global-attention layer's larger KV share) and
a 100-600 MiB embedding and head. Each call is
timed on its own with ``time.perf_counter_ns`` after a warm-up; p50, p99 and mean are reported in
milliseconds, printed as a table and written as JSON (``benchmarks/results/planner.json`` unless
``--output`` says otherwise). Every input is checked once -- the plan fits each worker, or no plan
is possible -- so a broken planner cannot give a fast but wrong figure. Target: p99 <= 20 ms at
64 workers.

    python benchmarks/planner.py [--quick] [--output PATH]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from report import environment, percentile, write  # the benchmarks folder is on sys.path
from sollol_llamacpp.planner import ModelNeeds, NoPlanFits, WorkerCapacity, plan_shards

from sollol_core.types import Endpoint

WORKERS = (8, 64)
LAYERS = 128
STRATEGIES = ("memory_aware", "even")
SEED = 20240601
INPUTS = 64
MIB, GIB = 2**20, 2**30
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "planner.json"

Case = tuple[ModelNeeds, list[WorkerCapacity]]


def make_case(rng: random.Random, workers: int) -> Case:
    most = rng.choice((8, 16, 48)) * GIB
    fleet = [WorkerCapacity(Endpoint("llamacpp-rpc", f"10.0.{i // 250}.{i % 250 + 1}", 50052),
                            rng.randrange(2 * GIB, most), round(rng.uniform(0.1, 5.0), 2))
             for i in range(workers)]
    overhead, margin = rng.randrange(256 * MIB, 1024 * MIB), 0.1
    usable = sum(max(0, int(w.free_bytes * (1 - margin)) - overhead) for w in fleet)
    share = rng.uniform(0.15, 0.9)
    shape = [1.0 + (0.5 if i % 6 == 5 else 0.0) + rng.uniform(-0.03, 0.03) for i in range(LAYERS)]
    ends = rng.randrange(100 * MIB, 600 * MIB)  # token embedding, output head
    scale = min(3 * GIB, max(1.0, (usable * share - 2 * ends) / sum(shape)))
    needs = ModelNeeds(layer_bytes=tuple(int(scale * s) for s in shape), first_bytes=ends,
                       last_bytes=ends, overhead_bytes=overhead, margin=margin)
    return needs, fleet


def check(case: Case, strategy: str) -> bool:
    """True when a plan came back (and it fits), False for NoPlanFits."""
    needs, fleet = case
    try:
        plan = plan_shards(needs, fleet, strategy=strategy)  # type: ignore[arg-type]
    except NoPlanFits as exc:
        assert exc.missing_bytes > 0
        return False
    by_endpoint = {w.endpoint: w for w in fleet}
    bounds = [0, *itertools.accumulate(plan.layers)]
    assert bounds[-1] == LAYERS and min(plan.layers) >= 1
    assert abs(sum(plan.tensor_split) - 1) < 1e-3
    k = len(plan.workers)
    for j, endpoint in enumerate(plan.workers):
        held = sum(needs.layer_bytes[bounds[j]:bounds[j + 1]]) + needs.overhead_bytes
        held += (needs.first_bytes if j == 0 else 0) + (needs.last_bytes if j == k - 1 else 0)
        assert held <= math.floor(by_endpoint[endpoint].free_bytes * (1 - needs.margin)), plan
    return True


def measure(workers: int, strategy: str, calls: int) -> dict[str, Any]:
    rng = random.Random(f"{SEED}-{workers}")
    cases = [make_case(rng, workers) for _ in range(INPUTS)]
    planned = sum(check(case, strategy) for case in cases)
    for needs, fleet in cases:  # warm-up
        try:
            plan_shards(needs, fleet, strategy=strategy)  # type: ignore[arg-type]
        except NoPlanFits:
            pass
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(calls):
            needs, fleet = cases[i % INPUTS]
            start = clock()
            try:
                plan_shards(needs, fleet, strategy=strategy)  # type: ignore[arg-type]
            except NoPlanFits:
                pass
            samples.append(clock() - start)
    finally:
        gc.enable()
    return {"workers": workers, "layers": LAYERS, "strategy": strategy, "calls": calls,
            "inputs": INPUTS, "planned": planned, "p50_ms": round(percentile(samples, 50) / 1e6, 3),
            "p99_ms": round(percentile(samples, 99) / 1e6, 3),
            "mean_ms": round(statistics.fmean(samples) / 1e6, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    args = parser.parse_args(argv)

    calls = 256 if args.quick else 2048
    results = []
    for workers in WORKERS:
        for strategy in STRATEGIES:
            print(f"planner: {workers} workers x {LAYERS} layers, {strategy}, {calls} calls...",
                  file=sys.stderr, flush=True)
            results.append(measure(workers, strategy, calls))

    print(f"{'workers':>7} {'layers':>6} {'strategy':>12} {'planned':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'mean ms':>8}")
    for r in results:
        print(f"{r['workers']:>7} {r['layers']:>6} {r['strategy']:>12} "
              f"{r['planned']:>4}/{r['inputs']:<3} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['mean_ms']:>8.3f}")

    write(args.output, {"benchmark": "planner", **environment(), "seed": SEED,
                        "target_p99_ms_at_64_workers": 20.0, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
