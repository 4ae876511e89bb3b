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
    Role,
)

POLICY = "default"
#: Candidates kept in a decision, best first: enough to explain it without copying a big fleet.
KEPT_CANDIDATES = 8


def score(node: NodeSnapshot, model: str) -> float:
    """Higher is better. Spare capacity dominates, then a model already in memory, then latency."""
    spare = max(node.parallel - node.in_flight, 0) / max(node.parallel, 1)
    loaded = 25.0 if node.has_loaded(model) else 0.0
    return round(100.0 * spare + loaded - min(node.latency_ms or 0.0, 1000.0) / 100.0, 3)


def explain(node: NodeSnapshot, model: str) -> str:
    loaded = "loaded" if node.has_loaded(model) else "not loaded"
    return f"{node.in_flight}/{node.parallel} busy, {loaded}, {node.latency_ms or 0.0:.1f} ms"


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
    ranked = sorted(((score(n, model), n) for n in holders),
                    key=lambda item: (-item[0], item[1].endpoint.key))
    candidates = tuple(Candidate(n.endpoint, value, explain(n, model))
                       for value, n in ranked[:KEPT_CANDIDATES])
    best = candidates[0]
    return Decision.whole(request, best.endpoint, policy=POLICY, candidates=candidates,
                          reason=f"best of {len(holders)} holding the model: {best.note}")
