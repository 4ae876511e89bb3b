"""Shard planning: which RPC workers hold which layers of a model, and the ``-ts`` to say so.
Pure and synchronous: plain values in, a :class:`ShardPlan` (or :class:`NoPlanFits`) out.

The fit model. Worker *i* can give ``usable_i = floor(free_i * (1 - margin)) - overhead`` bytes.
A plan lists its workers in *plan order*, the order of ``--rpc`` and ``-ts``: the worker with the
most usable memory first (it also holds the token embedding, ``first_bytes``), the second largest
last (it holds the output head, ``last_bytes``, so the smallest worker never carries a head), the
others in between, largest first; ties by endpoint key. Layers go to workers in contiguous ranges
in that order, at least one each. A set of workers *fits* when such a split keeps every worker
within its usable memory. Other orders are not searched (there are k! of them).

Why the fewest workers is found exactly, without trying subsets: a worker's position depends only
on its rank inside the set. If some set S of k workers fits, so does T, the k workers with the most
usable memory: T's r-th largest is at least S's r-th largest and takes the same position, so S's
split works on T unchanged. So the fewest count is the first k whose top-k set fits; k is scanned
upward, not bisected, because adding a small worker can break a fit (it may hold no layer at all).
The feasibility test of an ordered set is exact: boundary sets computed backward from the last
layer (intervals, O(k log L) when every layer fits every worker).

Among the sets of that size, the lowest total rtt_ms is a knapsack-like problem, so it is
approximated: the lowest rtt *bottleneck* first (the shortest prefix of the workers by rtt whose
top-k by memory fits; exact, by bisection), then one pass of swaps, each replacing the slowest
member left by the fastest outsider that keeps the fit. When the k fastest workers fit, they are
taken (optimal). Ties go by endpoint key throughout.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Sequence
from typing import Literal

import attrs

from sollol_core.errors import SollolError
from sollol_core.types import Endpoint, NodeSnapshot, ShardPlan

Strategy = Literal["memory_aware", "even"]


@attrs.frozen
class ModelNeeds:
    """What a model needs, from an estimator."""

    layer_bytes: tuple[int, ...]  # per layer: weights + that layer's KV cache share
    first_bytes: int = 0  # non-layer bytes on the first worker (token embedding)
    last_bytes: int = 0  # non-layer bytes on the last worker (output head)
    overhead_bytes: int = 0  # per worker: compute buffers etc.
    margin: float = 0.1  # safety margin on each worker's free memory

    def __attrs_post_init__(self) -> None:
        if not self.layer_bytes:
            raise ValueError("a model has at least one layer")
        if min(*self.layer_bytes, self.first_bytes, self.last_bytes, self.overhead_bytes) < 0:
            raise ValueError("byte counts cannot be negative")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin {self.margin} is outside [0, 1)")

    @property
    def total_bytes(self) -> int:
        """Layers, embedding and head: what the workers hold between them (overheads aside)."""
        return sum(self.layer_bytes) + self.first_bytes + self.last_bytes


@attrs.frozen
class WorkerCapacity:
    endpoint: Endpoint
    free_bytes: int
    rtt_ms: float = 0.0

    @classmethod
    def of(cls, snapshot: NodeSnapshot) -> WorkerCapacity:
        return cls(snapshot.endpoint, snapshot.free_bytes, snapshot.latency_ms or 0.0)

    def usable_bytes(self, needs: ModelNeeds) -> int:
        return math.floor(self.free_bytes * (1.0 - needs.margin)) - needs.overhead_bytes


class NoPlanFits(SollolError):
    """No set of the workers can hold the model; ``missing_bytes`` > 0 says roughly how much
    more memory it would take."""

    def __init__(self, message: str, *, missing_bytes: int) -> None:
        super().__init__(message)
        self.missing_bytes = missing_bytes


@attrs.frozen
class _Worker:
    usable: int
    size_key: tuple[int, str]  # largest first, then by endpoint key
    rtt_key: tuple[float, str]  # fastest first, then by endpoint key
    capacity: WorkerCapacity


_by_size, _by_rtt = operator.attrgetter("size_key"), operator.attrgetter("rtt_key")


def _plan_order(workers: Sequence[_Worker]) -> list[_Worker]:
    ranked = sorted(workers, key=_by_size)
    return ranked if len(ranked) < 3 else [ranked[0], *ranked[2:], ranked[1]]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class _Layout:
    """The model's layers as prefix sums, and the fit tests and splits over ordered workers."""

    def __init__(self, needs: ModelNeeds, strategy: Strategy) -> None:
        self.needs, self.strategy = needs, strategy
        self.layers = needs.layer_bytes
        self.n = len(self.layers)
        self.prefix = [0, *itertools.accumulate(self.layers)]
        self.largest = max(self.layers)

    def caps(self, order: Sequence[_Worker]) -> list[int]:
        caps = [w.usable for w in order]
        caps[0] -= self.needs.first_bytes
        caps[-1] -= self.needs.last_bytes
        return caps

    def even_counts(self, k: int) -> list[int]:
        q, r = divmod(self.n, k)
        return [q + 1] * r + [q] * (k - r)

    def overflow(self, caps: Sequence[int], counts: Sequence[int]) -> int:
        p, b = self.prefix, [0, *itertools.accumulate(counts)]
        return sum(max(0, p[b[j + 1]] - p[b[j]] - cap) for j, cap in enumerate(caps))

    def _step(self, ends: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
        """Starts s from which one worker of ``cap`` reaches an end in ``ends`` (taking >= 1)."""
        if cap < 0:
            return []
        p, out = self.prefix, []
        for a, b in ends:
            # s < a: the best end is a itself; a <= s < b: it is s + 1 (one layer).
            out.append((bisect.bisect_left(p, p[a] - cap, 0, a), a - 1))
            if cap >= self.largest:
                out.append((a, b - 1))
            else:
                out.extend((s, s) for s in range(a, b) if self.layers[s] <= cap)
        merged: list[tuple[int, int]] = []
        for a, b in sorted(span for span in out if span[0] <= span[1]):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def allowed(self, caps: Sequence[int]) -> list[list[tuple[int, int]]] | None:
        """Per boundary j (after j workers), the layer indexes from which the remaining workers
        can finish; None when the first worker cannot start at 0 (the set does not fit)."""
        sets = [[(self.n, self.n)]]
        for cap in reversed(caps):
            sets.append(self._step(sets[-1], cap))
            if not sets[-1]:
                return None
        sets.reverse()
        return sets if sets[0][0][0] == 0 else None

    def fits(self, workers: Sequence[_Worker]) -> bool:
        caps = self.caps(_plan_order(workers))
        if self.strategy == "even":
            return self.overflow(caps, self.even_counts(len(caps))) == 0
        return self.allowed(caps) is not None

    def proportional(self, caps: Sequence[int],
                     allowed: Sequence[Sequence[tuple[int, int]]] | None) -> list[int]:
        """Layer counts with cumulative bytes nearest to shares proportional to ``caps``, each
        boundary kept inside ``allowed`` and within the worker's cap (when given), else only
        leaving every worker >= 1 layer."""
        p, n, k = self.prefix, self.n, len(caps)
        total_cap = sum(max(c, 0) for c in caps) or 1
        bounds, cum = [0], 0
        for j in range(1, k):
            start = bounds[-1]
            cum += max(caps[j - 1], 0)
            target = p[n] * cum / total_cap
            spans = [(j, n - k + j)] if allowed is None else allowed[j]
            reach = n if allowed is None else bisect.bisect_right(p, p[start] + caps[j - 1]) - 1
            best: tuple[tuple[float, float], int] | None = None
            for a, b in spans:
                lo, hi = max(a, start + 1), min(b, reach)
                if lo > hi:
                    continue
                i = bisect.bisect_left(p, target, lo, hi + 1)
                for e in (i - 1, i):
                    if lo <= e <= hi:
                        key = (abs(p[e] - target), abs(e * total_cap - n * cum))
                        if best is None or key < best[0]:
                            best = (key, e)
            assert best is not None, "a boundary in the allowed set always has a successor"
            bounds.append(best[1])
        bounds.append(n)
        return [b - a for a, b in itertools.pairwise(bounds)]

    def split(self, caps: Sequence[int], *, bounded: bool = True) -> list[int]:
        if self.strategy == "even":
            return self.even_counts(len(caps))
        return self.proportional(caps, self.allowed(caps) if bounded else None)


def _fewest(layout: _Layout, by_size: list[_Worker], least: int) -> int | None:
    """The smallest k >= least whose k largest workers fit (see the module docstring)."""
    running, need = 0, layout.needs.total_bytes
    for k in range(1, min(len(by_size), layout.n) + 1):
        running += by_size[k - 1].usable
        if k >= least and running >= need and layout.fits(by_size[:k]):
            return k
    return None


def _cheapest(layout: _Layout, workers: list[_Worker], k: int) -> list[_Worker]:
    """A k-set that fits with a low total rtt: the lowest bottleneck, then greedy swaps."""
    by_rtt = sorted(workers, key=_by_rtt)

    def best_of(prefix: int) -> list[_Worker]:
        return sorted(by_rtt[:prefix], key=_by_size)[:k]

    lo, hi = k, len(by_rtt)  # best_of(len) is the top-k set, known to fit
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if layout.fits(best_of(mid)) else (mid + 1, hi)
    chosen = best_of(lo)
    for member in sorted(chosen, key=_by_rtt, reverse=True):
        rest = [w for w in chosen if w is not member]
        taken = {w.size_key for w in chosen}
        # Faster outsiders, largest first: the fit is monotone in the newcomer's size.
        options = sorted((w for w in by_rtt if w.rtt_key < member.rtt_key
                          and w.size_key not in taken), key=_by_size)
        if not options or not layout.fits([*rest, options[0]]):
            continue
        good, bad = 0, len(options)
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if layout.fits([*rest, options[mid]]) else (good, mid)
        chosen = [*rest, min(options[: good + 1], key=_by_rtt)]
    return chosen


def _no_fit(layout: _Layout, by_size: list[_Worker], count: int) -> NoPlanFits:
    need = layout.needs.total_bytes
    usable = sum(max(w.usable, 0) for w in by_size)
    caps = layout.caps(_plan_order(by_size[:count])) if count else []
    overflow = layout.overflow(caps, layout.split(caps, bounded=False)) if count else 0
    missing = max(need - usable, overflow, 1)
    have = (f"the {len(by_size)} free worker{'s have' if len(by_size) != 1 else ' has'} "
            f"{_gib(usable)} usable")
    why = "" if need > usable else (
        f", but no {'even ' if layout.strategy == 'even' else ''}split of the {layout.n} "
        "layers fits them")
    return NoPlanFits(f"needs {_gib(need)}; {have}{why}: {_gib(missing)} missing",
                      missing_bytes=missing)


def _tensor_split(counts: Sequence[int]) -> tuple[float, ...]:
    """``-ts`` proportions that make llama.cpp give each worker exactly its planned layers.

    llama.cpp puts layer ``il`` on the first device whose cumulative share exceeds
    ``il / (n_layer + 1)`` (the output head counts as layer ``n_layer``). Plain count proportions
    would put boundaries exactly on those points and shift layers; here each boundary sits half a
    layer below the next worker's first layer, far from any rounding. 6 decimals, summing to 1.
    """
    n_layer = sum(counts)
    boundaries, planned = [], 0
    for count in counts[:-1]:
        planned += count
        boundaries.append((planned - 0.5) / (n_layer + 1))
    edges = [0.0, *boundaries, 1.0]
    shares = [round(b - a, 6) for a, b in itertools.pairwise(edges)]
    shares[-1] = round(1.0 - sum(shares[:-1]), 6)
    return tuple(shares)


def llama_cpp_layers(tensor_split: Sequence[float], n_layer: int) -> tuple[int, ...]:
    """How llama.cpp (``load_tensors``) assigns ``n_layer`` layers for a ``-ts`` split."""
    cumulative, running = [], 0.0
    total = sum(tensor_split)
    for share in tensor_split:
        running += share / total
        cumulative.append(running)
    counts = [0] * len(tensor_split)
    for layer in range(n_layer):
        point = layer / (n_layer + 1)
        device = next((i for i, c in enumerate(cumulative) if c > point), len(cumulative) - 1)
        counts[device] += 1
    return tuple(counts)


def plan_shards(needs: ModelNeeds, workers: Sequence[WorkerCapacity], *,
                strategy: Strategy = "memory_aware", min_workers: int = 1) -> ShardPlan:
    """Split ``needs`` over the fewest ``workers`` that hold it (at least ``min_workers`` when
    there are that many, and never more workers than layers).

    ``memory_aware`` gives each worker layers in proportion to its usable memory, moved where
    needed so that none overflows; ``even`` gives equal counts (differing by at most 1, the
    extra ones to the first workers) and fails when a share does not fit. Raises NoPlanFits.
    """
    if strategy not in ("memory_aware", "even"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if min_workers < 1:
        raise ValueError("min_workers must be at least 1")
    pool = [_Worker(u := w.usable_bytes(needs), (-u, w.endpoint.key), (w.rtt_ms, w.endpoint.key),
                    w) for w in workers]
    if len({w.capacity.endpoint.key for w in pool}) != len(pool):
        raise ValueError("a worker is listed twice")
    layout = _Layout(needs, strategy)
    by_size = sorted(pool, key=_by_size)
    count = min(len(pool), layout.n)
    k = _fewest(layout, by_size, min(min_workers, count))
    if k is None:
        raise _no_fit(layout, by_size, count)
    order = _plan_order(_cheapest(layout, pool, k))
    counts = layout.split(layout.caps(order))
    return ShardPlan(workers=tuple(w.capacity.endpoint for w in order),
                     tensor_split=_tensor_split(counts), layers=tuple(counts))
