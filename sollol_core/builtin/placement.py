"""The default placement policy: a healthy node that holds the model and has room now.

Registered ``trylast`` so that any installed policy is asked first; block it by its plugin name
``builtin-placement``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from sollol_core.affinity import PromptCache
from sollol_core.builtin import prediction
from sollol_core.hookspecs import hookimpl
from sollol_core.queue import Running, Waiting
from sollol_core.types import (
    Candidate,
    Decision,
    FleetSnapshot,
    Health,
    InferenceRequest,
    NodeSnapshot,
    Performance,
    Role,
    model_key,
)

POLICY = "default"
#: Candidates kept in a decision, best first: enough to explain it without copying a big fleet.
KEPT_CANDIDATES = 8


def score(node: NodeSnapshot, loaded: bool, seen: Performance | None) -> float:
    """Higher is better; ``loaded``: the model is in the node's memory.

    Room now dominates (100 × the share of free slots), then a model already in memory (+25),
    then what this node did with this model lately: generation speed (up to +20 at 200 tokens/s)
    and latency (-1 per 100 ms, at most -50; the probe's round trip until a request has run),
    then free device memory (up to +10). Written for speed: it runs once per node per decision.
    """
    parallel = node.parallel if node.parallel > 0 else 1
    spare = parallel - node.in_flight
    value = 100.0 * spare / parallel if spare > 0 else 0.0
    if loaded:
        value += 25.0
    if seen is not None:
        latency = seen.latency_ms
        speed = seen.tokens_per_s
        if speed:
            value += (speed if speed < 200.0 else 200.0) / 10.0
    else:
        latency = node.latency_ms or 0.0
    value -= (latency if latency < 5000.0 else 5000.0) / 100.0
    if node.devices:
        total = node.total_bytes
        if total:
            value += 10.0 * node.free_bytes / total
    return value


def explain(node: NodeSnapshot, loaded: bool, seen: Performance | None,
            fleet: FleetSnapshot) -> str:
    """The candidate's note: what its score was made of, in words and numbers."""
    parts = [f"{node.in_flight}/{node.parallel} busy", "loaded" if loaded else "not loaded"]
    if seen is not None:
        parts.append(f"{seen.latency_ms:.0f} ms avg")
        if seen.tokens_per_s:
            parts.append(f"{seen.tokens_per_s:.0f} tok/s")
    else:
        parts.append(f"{node.latency_ms or 0.0:.1f} ms probe")
    free = fleet.free_bytes_of(node)  # the probe's devices, else the machine's telemetry
    if free is not None:
        parts.append(f"{free / 2**30:.1f} GiB free")
    return ", ".join(parts)


@hookimpl(trylast=True)
def sollol_place(request: InferenceRequest, fleet: FleetSnapshot) -> Decision:
    model = request.model
    key = model_key(model)  # normalised once, not once per node
    seen, prior = prediction.measured(fleet, model)
    up, role = Health.UP, Role.NODE
    healthy = 0
    holders: list[tuple[NodeSnapshot, bool]] = []
    for node in fleet.nodes:
        if node.health is up and node.role is role:
            healthy += 1
            loaded = node.model_state(key)
            if loaded is not None:
                holders.append((node, loaded))
    if not holders:
        return Decision.refuse(
            request, policy=POLICY,
            reason=(f"model '{model}' is on no healthy node "
                    f"({healthy} healthy of {len(fleet.nodes)} known)"))
    if prior is not None:  # some node has run this model: choose by predicted time
        return _by_prediction(request, fleet, holders, seen, prior)
    # (-score, endpoint key, node, loaded): tuples compare in C; the unique endpoint key breaks
    # ties deterministically, so the node and the flag are never compared
    scored = [(-score(node, loaded, None), node.endpoint.key, node, loaded)
              for node, loaded in holders]
    # Only the few best are explained; a full sort of a large fleet would cost more than scoring.
    best = heapq.nsmallest(KEPT_CANDIDATES, scored)
    candidates = tuple(Candidate(n.endpoint, round(-value, 3), explain(n, loaded, None, fleet))
                       for value, _, n, loaded in best)
    chosen = candidates[0]
    return Decision.whole(request, chosen.endpoint, policy=POLICY, candidates=candidates,
                          reason=f"best of {len(scored)} holding the model: {chosen.note}")


def _by_prediction(request: InferenceRequest, fleet: FleetSnapshot,
                   holders: list[tuple[NodeSnapshot, bool]], seen: dict[str, Performance],
                   prior: prediction.Prior) -> Decision:
    """Each holder's predicted first token and end, from what the fleet measured; the earliest
    end wins (the earliest first token for a stream, among nodes that end it nearly as soon),
    with the numbers in the reason."""
    work = prediction.Work.of(request, prior)
    rank, get = prediction.rank, seen.get
    cache, waiting, busy = fleet.fact(PromptCache), fleet.fact(Waiting), fleet.fact(Running)
    cached: Mapping[str, float] = cache.cached_tokens if cache is not None else {}
    queued: Mapping[str, int] = waiting.per_node if waiting is not None else {}
    ends: Mapping[str, tuple[float, ...]] = busy.per_node if busy is not None else {}
    held, ahead, running = cached.get, queued.get, ends.get
    # ((first token s, end s), endpoint key, node, loaded): the unique key breaks ties
    timed = [(rank(node, loaded, get(key), prior, work, held(key, 0.0), ahead(key, 0),
                   running(key, ())), key, node, loaded)
             for node, loaded in holders for key in (node.endpoint.key,)]
    if work.streamed:
        latest = min(times[1] for times, *_ in timed) * prediction.STREAM_END_SLACK
        ranked = [(times[0], key, n, loaded) for times, key, n, loaded in timed
                  if times[1] <= latest]
        goal = "earliest first token"
    else:
        ranked = [(times[1], key, n, loaded) for times, key, n, loaded in timed]
        goal = "earliest end"
    best = [(value, endpoint, n, loaded,
             prediction.forecast(n, loaded, get(endpoint), prior, work, held(endpoint, 0.0),
                                 ahead(endpoint, 0), running(endpoint, ())))
            for value, endpoint, n, loaded in heapq.nsmallest(KEPT_CANDIDATES, ranked)]
    candidates = tuple(
        Candidate(n.endpoint, round(-value * 1000, 3),
                  f"first token {f.first_token_s:.2f} s, end {f.done_s:.2f} s; "
                  f"{explain(n, loaded, get(endpoint), fleet)}")
        for value, endpoint, n, loaded, f in best)
    forecast = best[0][4]
    runner_up = (f"; next best {best[1][4].first_token_s:.2f} s to the first token, "
                 f"{best[1][4].done_s:.2f} s to the end" if len(best) > 1 else "")
    return Decision.whole(request, candidates[0].endpoint, policy=POLICY,
                          candidates=candidates, service_s=forecast.done_s - forecast.wait_s,
                          reason=(f"{goal} of {len(timed)} holding the model: "
                                  f"{forecast.describe(work)}{runner_up}"))
