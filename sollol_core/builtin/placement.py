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
    InferenceRequest,
    NodeSnapshot,
    Role,
)

POLICY = "default"


def score(node: NodeSnapshot, model: str) -> tuple[float, str]:
    """Higher is better. Spare capacity dominates, then a model already in memory, then latency."""
    spare = max(node.parallel - node.in_flight, 0) / max(node.parallel, 1)
    loaded = node.has_loaded(model)
    latency = node.latency_ms or 0.0
    value = 100.0 * spare + (25.0 if loaded else 0.0) - min(latency, 1000.0) / 100.0
    note = (f"{node.in_flight}/{node.parallel} busy, "
            f"{'loaded' if loaded else 'not loaded'}, {latency:.1f} ms")
    return round(value, 3), note


@hookimpl(trylast=True)
def sollol_place(request: InferenceRequest, fleet: FleetSnapshot) -> Decision:
    nodes = fleet.healthy(Role.NODE)
    holders = [n for n in nodes if n.holds(request.model)]
    if not holders:
        return Decision.refuse(
            request, policy=POLICY,
            reason=(f"model '{request.model}' is on no healthy node "
                    f"({len(nodes)} healthy of {len(fleet.nodes)} known)"))
    scored = sorted(((*score(n, request.model), n) for n in holders),
                    key=lambda item: (-item[0], item[2].endpoint.key))
    candidates = tuple(Candidate(n.endpoint, value, note) for value, note, n in scored)
    best = candidates[0]
    return Decision.whole(request, best.endpoint, policy=POLICY, candidates=candidates,
                          reason=f"best of {len(candidates)} holding the model: {best.note}")
