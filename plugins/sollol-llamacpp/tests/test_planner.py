"""The shard planner: properties against a brute-force fitter on small instances, examples."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sollol_llamacpp.planner import (
    ModelNeeds,
    NoPlanFits,
    WorkerCapacity,
    llama_cpp_layers,
    plan_shards,
)

from sollol_core.types import DeviceMemory, Endpoint, Health, NodeSnapshot

GIB = 2**30
STRATEGIES = ("memory_aware", "even")


def endpoint(i: int) -> Endpoint:
    return Endpoint("llamacpp-rpc", f"10.0.0.{i}", 50052)


# --- the reference: exhaustive, written independently of the planner ------------------------

def usable(w: WorkerCapacity, needs: ModelNeeds) -> int:
    return math.floor(w.free_bytes * (1 - needs.margin)) - needs.overhead_bytes


def plan_order(ws: Sequence[WorkerCapacity], needs: ModelNeeds) -> list[WorkerCapacity]:
    """The documented order: largest first, second largest last, the rest largest first."""
    ranked = sorted(ws, key=lambda w: (-usable(w, needs), w.endpoint.key))
    return ranked if len(ranked) < 3 else [ranked[0], *ranked[2:], ranked[1]]


def load(needs: ModelNeeds, position: int, k: int, layers: Sequence[int]) -> int:
    """Bytes a worker at ``position`` of ``k`` holds: its layers, head/embedding, overhead."""
    extra = needs.overhead_bytes
    extra += needs.first_bytes if position == 0 else 0
    extra += needs.last_bytes if position == k - 1 else 0
    return sum(layers) + extra


def fits_in_order(needs: ModelNeeds, ordered: Sequence[WorkerCapacity], strategy: str) -> bool:
    """Some contiguous split (>= 1 layer each) keeps each worker within free * (1 - margin)."""
    n, k, layers = len(needs.layer_bytes), len(ordered), needs.layer_bytes
    if not 1 <= k <= n:
        return False
    if strategy == "even":
        q, r = divmod(n, k)
        counts = [q + 1] * r + [q] * (k - r)
        bounds = [0, *itertools.accumulate(counts)]
        return all(load(needs, j, k, layers[bounds[j]:bounds[j + 1]])
                   <= w.free_bytes * (1 - needs.margin) for j, w in enumerate(ordered))
    reach = {0}
    for j, w in enumerate(ordered):
        reach = {e for s in reach for e in range(s + 1, n + 1)
                 if load(needs, j, k, layers[s:e]) <= w.free_bytes * (1 - needs.margin)}
    return n in reach


def some_subset_fits(needs: ModelNeeds, workers: Sequence[WorkerCapacity], sizes: range,
                     strategy: str) -> bool:
    return any(fits_in_order(needs, plan_order(subset, needs), strategy)
               for size in sizes for subset in itertools.combinations(workers, size))


def least_workers(min_workers: int, workers: int, layers: int) -> int:
    return min(min_workers, workers, layers)


# --- generated instances ---------------------------------------------------------------------

@st.composite
def instances(draw: st.DrawFn, max_workers: int = 6, max_layers: int = 24,
              scale: int = 100) -> tuple[ModelNeeds, list[WorkerCapacity], int]:
    layer = st.integers(0, scale)
    n_layers = draw(st.integers(1, max_layers))
    layers = draw(st.lists(layer, min_size=n_layers, max_size=n_layers))
    if draw(st.booleans()):  # real models: near-uniform layers
        base = draw(st.integers(1, scale))
        layers = [base + (b % 3) for b in layers]
    needs = ModelNeeds(
        layer_bytes=tuple(layers),
        first_bytes=draw(st.integers(0, 2 * scale)),
        last_bytes=draw(st.integers(0, 2 * scale)),
        overhead_bytes=draw(st.integers(0, scale)),
        margin=draw(st.sampled_from([0.0, 0.1, 0.25, 0.37])))
    total = sum(layers) + needs.first_bytes + needs.last_bytes
    # Each worker holds up to 10, 30 or 90% of the model (plus overhead, before the margin), give
    # or take: most instances need several workers, some fit on one, some on none.
    n_workers = draw(st.integers(0, max_workers))
    top = draw(st.sampled_from([10, 30, 90]))
    shares = draw(st.lists(st.integers(0, top), min_size=n_workers, max_size=n_workers))
    jitter = st.integers(-scale // 2, scale // 2)
    frees = [max(0, int((total * pct // 100 + needs.overhead_bytes) / (1 - needs.margin))
                 + draw(jitter)) for pct in shares]
    rtts = st.sampled_from([0.0, 0.5, 1.0, 2.5, 7.0])  # a few values: ties happen
    workers = [WorkerCapacity(endpoint(i), free, draw(rtts)) for i, free in enumerate(frees)]
    return needs, workers, draw(st.integers(1, 4))


SMALL = settings(max_examples=1000, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def check_plan(needs: ModelNeeds, workers: Sequence[WorkerCapacity], plan_workers: Sequence[
        Endpoint], layers: Sequence[int], split: Sequence[float]) -> None:
    """(1) it fits, (2) layer counts, (6) tensor_split; and the documented worker order."""
    by_endpoint = {w.endpoint: w for w in workers}
    chosen = [by_endpoint[e] for e in plan_workers]
    n, k = len(needs.layer_bytes), len(chosen)
    assert len(set(plan_workers)) == k == len(layers) == len(split) >= 1
    assert chosen == plan_order(chosen, needs)
    assert sum(layers) == n and all(c >= 1 for c in layers)
    bounds = [0, *itertools.accumulate(layers)]  # contiguous by construction
    for j, w in enumerate(chosen):
        held = load(needs, j, k, needs.layer_bytes[bounds[j]:bounds[j + 1]])
        assert held <= w.free_bytes * (1 - needs.margin), (j, held, w)
    assert abs(sum(split) - 1) <= 1e-3
    assert all(round(s, 6) == s for s in split)
    assert llama_cpp_layers(split, n) == tuple(layers)  # llama.cpp places what we planned


@SMALL
@given(instances(), st.sampled_from(STRATEGIES))
def test_plans_fit_use_fewest_workers_or_truly_nothing_fits(
        case: tuple[ModelNeeds, list[WorkerCapacity], int], strategy: str) -> None:
    needs, workers, min_workers = case
    n = len(needs.layer_bytes)
    least = least_workers(min_workers, len(workers), n)
    try:
        plan = plan_shards(needs, workers, strategy=strategy,  # type: ignore[arg-type]
                           min_workers=min_workers)
    except NoPlanFits as exc:  # (4)
        event("no plan")
        assert exc.missing_bytes > 0
        assert not some_subset_fits(needs, workers, range(max(least, 1), n + 1), strategy)
        return
    check_plan(needs, workers, plan.workers, plan.layers, plan.tensor_split)
    k = len(plan.workers)
    if strategy == "even":  # as even as can be, the extra layers first
        assert list(plan.layers) == sorted(plan.layers, reverse=True)
        assert plan.layers[0] - plan.layers[-1] <= 1
    event(f"{k} of {len(workers)} workers")
    assert k >= least
    # (3) no smaller set fits, in particular none of size k - 1
    assert not some_subset_fits(needs, workers, range(least, k), strategy)


@SMALL
@given(instances())
def test_memory_aware_fits_whatever_even_fits(
        case: tuple[ModelNeeds, list[WorkerCapacity], int]) -> None:  # (5)
    needs, workers, min_workers = case
    try:
        even = plan_shards(needs, workers, strategy="even", min_workers=min_workers)
    except NoPlanFits:
        return
    aware = plan_shards(needs, workers, min_workers=min_workers)
    assert len(aware.workers) <= len(even.workers)


@settings(max_examples=60, deadline=None)
@given(instances(max_workers=64, max_layers=128, scale=10_000), st.sampled_from(STRATEGIES))
def test_large_plans_fit(case: tuple[ModelNeeds, list[WorkerCapacity], int],
                         strategy: str) -> None:
    needs, workers, min_workers = case
    try:
        plan = plan_shards(needs, workers, strategy=strategy,  # type: ignore[arg-type]
                           min_workers=min_workers)
    except NoPlanFits as exc:
        assert exc.missing_bytes > 0
        return
    check_plan(needs, workers, plan.workers, plan.layers, plan.tensor_split)


# --- examples --------------------------------------------------------------------------------

def test_memory_aware_fits_where_even_does_not() -> None:  # (5), the explicit case
    needs = ModelNeeds(layer_bytes=(GIB,) * 12, margin=0.0)
    workers = [WorkerCapacity(endpoint(1), 10 * GIB), WorkerCapacity(endpoint(2), 3 * GIB)]
    plan = plan_shards(needs, workers)
    assert plan.workers == (endpoint(1), endpoint(2))
    assert plan.layers == (10, 2) or plan.layers == (9, 3)
    with pytest.raises(NoPlanFits, match="no even split of the 12 layers"):
        plan_shards(needs, workers, strategy="even")


def test_memory_aware_splits_in_proportion_to_usable_memory() -> None:
    needs = ModelNeeds(layer_bytes=(GIB,) * 30, margin=0.0)
    workers = [WorkerCapacity(endpoint(i), free * GIB) for i, free in enumerate((8, 12, 16))]
    plan = plan_shards(needs, workers)
    assert plan.workers == (endpoint(2), endpoint(0), endpoint(1))  # largest, ..., second last
    assert plan.layers == (13, 7, 10)  # 16 : 8 : 12 of 30
    assert llama_cpp_layers(plan.tensor_split, 30) == (13, 7, 10)
    equal = [WorkerCapacity(endpoint(i), 10 * GIB) for i in range(3)]
    assert plan_shards(needs, equal, strategy="even").layers == (10, 10, 10)


def test_no_plan_message_names_needed_usable_and_missing_gib() -> None:
    needs = ModelNeeds(layer_bytes=(GIB,) * 40, margin=0.0)
    workers = [WorkerCapacity(endpoint(i), 10 * GIB) for i in range(3)]
    with pytest.raises(NoPlanFits) as caught:
        plan_shards(needs, workers)
    assert str(caught.value) == (
        "needs 40.0 GiB; the 3 free workers have 30.0 GiB usable: 10.0 GiB missing")
    assert caught.value.missing_bytes == 10 * GIB


def test_no_plan_when_memory_suffices_but_no_split_does() -> None:
    needs = ModelNeeds(layer_bytes=(6 * GIB, 6 * GIB), margin=0.0)
    workers = [WorkerCapacity(endpoint(i), 5 * GIB) for i in range(4)]  # 20 GiB, 5 per worker
    with pytest.raises(NoPlanFits) as caught:
        plan_shards(needs, workers)
    assert re.fullmatch(r"needs 12\.0 GiB; the 4 free workers have 20\.0 GiB usable, but no "
                        r"split of the 2 layers fits them: 2\.0 GiB missing", str(caught.value))
    with pytest.raises(NoPlanFits, match=r"needs 0\.0 GiB; the 0 free workers have 0\.0 GiB"):
        plan_shards(ModelNeeds(layer_bytes=(1,)), [])


def test_fewest_workers_then_lowest_rtt_then_endpoint_key() -> None:
    needs = ModelNeeds(layer_bytes=(GIB,) * 8, margin=0.0)
    workers = [WorkerCapacity(endpoint(1), 20 * GIB, rtt_ms=5.0),  # the largest, but slow
               WorkerCapacity(endpoint(2), 9 * GIB, rtt_ms=1.0),
               WorkerCapacity(endpoint(3), 8 * GIB, rtt_ms=1.0),
               WorkerCapacity(endpoint(4), 4 * GIB, rtt_ms=0.1)]  # fast, too small alone
    assert plan_shards(needs, workers).workers == (endpoint(2),)
    assert plan_shards(needs, workers, min_workers=2).workers == (endpoint(2), endpoint(4))
    tied = [WorkerCapacity(endpoint(i), 9 * GIB, rtt_ms=1.0) for i in (7, 5, 6)]
    assert plan_shards(needs, tied).workers == (endpoint(5),)


def test_a_slower_member_is_swapped_for_a_faster_smaller_one() -> None:
    needs = ModelNeeds(layer_bytes=(GIB,) * 20, margin=0.0)
    workers = [WorkerCapacity(endpoint(1), 7 * GIB, rtt_ms=0.1),
               WorkerCapacity(endpoint(2), 3 * GIB, rtt_ms=0.2),
               WorkerCapacity(endpoint(3), 8 * GIB, rtt_ms=1.0),
               WorkerCapacity(endpoint(4), 10 * GIB, rtt_ms=2.0)]
    # Three workers are needed; {4, 3, 1} is the first to fit by bottleneck rtt (2.0), and
    # swapping 3 (1.0 ms) for 2 (0.2 ms) still fits: 10 + 3 + 7 GiB hold the 20 layers.
    plan = plan_shards(needs, workers)
    assert plan.workers == (endpoint(4), endpoint(2), endpoint(1))
    assert plan.layers == (10, 3, 7)


def test_min_workers_is_capped_by_workers_and_layers() -> None:
    needs = ModelNeeds(layer_bytes=(GIB,) * 3, margin=0.0)
    workers = [WorkerCapacity(endpoint(i), 10 * GIB) for i in range(5)]
    assert len(plan_shards(needs, workers, min_workers=2).workers) == 2
    assert plan_shards(needs, workers, min_workers=9).layers == (1, 1, 1)
    assert len(plan_shards(needs, workers[:1], min_workers=4).workers) == 1


def test_head_and_embedding_go_to_the_two_largest_workers() -> None:
    needs = ModelNeeds(layer_bytes=(GIB,) * 6, first_bytes=2 * GIB, last_bytes=2 * GIB,
                       margin=0.0)
    # In plain descending order the 2.5 GiB worker would be last and could not hold the head
    # plus one layer; in plan order it sits in the middle.
    workers = [WorkerCapacity(endpoint(1), 5 * GIB), WorkerCapacity(endpoint(2), 4 * GIB),
               WorkerCapacity(endpoint(3), int(2.5 * GIB))]
    plan = plan_shards(needs, workers)
    assert plan.workers == (endpoint(1), endpoint(3), endpoint(2))
    assert plan.layers == (2, 2, 2)


def test_plans_are_deterministic_whatever_the_input_order() -> None:
    rng = random.Random(7)
    needs = ModelNeeds(layer_bytes=tuple(rng.randrange(GIB // 4, GIB // 2) for _ in range(64)),
                       first_bytes=GIB // 2, last_bytes=GIB // 2, overhead_bytes=GIB // 8)
    workers = [WorkerCapacity(endpoint(i), rng.randrange(2 * GIB, 12 * GIB),
                              rng.choice([0.5, 1.0, 2.0])) for i in range(20)]
    first = plan_shards(needs, workers)
    for _ in range(5):
        rng.shuffle(workers)
        assert plan_shards(needs, workers) == first


def test_worker_capacity_from_a_snapshot() -> None:
    snapshot = NodeSnapshot(endpoint(1), Health.UP, taken_at=0.0, latency_ms=2.5,
                            devices=(DeviceMemory("CUDA0", 8 * GIB, 6 * GIB),
                                     DeviceMemory("CUDA1", 8 * GIB, 2 * GIB)))
    assert WorkerCapacity.of(snapshot) == WorkerCapacity(endpoint(1), 8 * GIB, 2.5)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        ModelNeeds(layer_bytes=())
    with pytest.raises(ValueError, match="negative"):
        ModelNeeds(layer_bytes=(1,), last_bytes=-1)
    with pytest.raises(ValueError, match="margin"):
        ModelNeeds(layer_bytes=(1,), margin=1.0)
    needs = ModelNeeds(layer_bytes=(1,))
    with pytest.raises(ValueError, match="listed twice"):
        plan_shards(needs, [WorkerCapacity(endpoint(1), 10)] * 2)
    with pytest.raises(ValueError, match="min_workers"):
        plan_shards(needs, [WorkerCapacity(endpoint(1), 10)], min_workers=0)
