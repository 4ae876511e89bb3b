"""The default placement policy: a healthy node that holds the model and has room now.

Registered ``trylast`` so that any installed policy is asked first; block it by its plugin name
``builtin-placement``.
"""

from __future__ import annotations

from sollol_core.hookspecs import hookimpl
from sollol_core.types import (
    Candidate,
    Decision,
    FleetSnapshot,
    Health,
    InferenceRequest,
    NodeSnapshot,
    Performance,
    Role,
)

POLICY = "default"
#: Candidates kept in a decision, best first: enough to explain it without copying a big fleet.
KEPT_CANDIDATES = 8


def score(node: NodeSnapshot, model: str, seen: Performance | None) -> float:
    """Higher is better.

    Room now dominates (100 × the share of free slots), then a model already in memory (+25),
    then what this node did with this model lately: generation speed (up to +20 at 200 tokens/s)
    and latency (-1 per 100 ms, at most -50; the probe's round trip until a request has run),
    then free device memory (up to +10).
    """
    spare = max(node.parallel - node.in_flight, 0) / max(node.parallel, 1)
    value = 100.0 * spare + (25.0 if node.has_loaded(model) else 0.0)
    latency = seen.latency_ms if seen is not None else (node.latency_ms or 0.0)
    value -= min(latency, 5000.0) / 100.0
    if seen is not None and seen.tokens_per_s:
        value += min(seen.tokens_per_s, 200.0) / 10.0
    if node.devices:
        value += 10.0 * node.free_bytes / max(node.total_bytes, 1)
    return round(value, 3)


def explain(node: NodeSnapshot, model: str, fleet: FleetSnapshot) -> str:
    parts = [f"{node.in_flight}/{node.parallel} busy",
             "loaded" if node.has_loaded(model) else "not loaded"]
    seen = fleet.performance_of(node.endpoint.key, model)
    if seen is not None:
        parts.append(f"{seen.latency_ms:.0f} ms avg")
        if seen.tokens_per_s:
            parts.append(f"{seen.tokens_per_s:.0f} tok/s")
    else:
        parts.append(f"{node.latency_ms or 0.0:.1f} ms probe")
    if node.total_bytes:
        parts.append(f"{node.free_bytes / 2**30:.1f} GiB free")
    return ", ".join(parts)


@hookimpl(trylast=True)
def sollol_place(request: InferenceRequest, fleet: FleetSnapshot) -> Decision:
    model = request.model
    nodes = [n for n in fleet.nodes if n.health is Health.UP and n.role is Role.NODE]
    holders = [n for n in nodes if n.holds(model)]
    if not holders:
        return Decision.refuse(
            request, policy=POLICY,
            reason=(f"model '{model}' is on no healthy node "
                    f"({len(nodes)} healthy of {len(fleet.nodes)} known)"))
    seen = fleet.performance_by_node(model)
    ranked = sorted(((score(n, model, seen.get(n.endpoint.key)), n) for n in holders),
                    key=lambda item: (-item[0], item[1].endpoint.key))
    candidates = tuple(Candidate(n.endpoint, value, explain(n, model, fleet))
                       for value, n in ranked[:KEPT_CANDIDATES])
    best = candidates[0]
    return Decision.whole(request, best.endpoint, policy=POLICY, candidates=candidates,
                          reason=f"best of {len(holders)} holding the model: {best.note}")
