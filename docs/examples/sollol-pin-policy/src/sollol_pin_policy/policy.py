"""Pin models to named nodes: ``SOLLOL_PINS="llama3.2=gpu-a|gpu-b;qwen3:8b=10.0.0.7:11434"``.

A pinned model runs only on its pinned nodes: the healthy one with the most spare slots wins, and
when none is healthy the request is refused rather than run elsewhere. A model that is not pinned
is left to the next policy (in the end SOLLOL's default).

The variable is read each time the hook is called, never at import. A malformed value raises
:class:`ValueError` naming the variable and the expected form, so the request fails with that
message until the value is fixed.
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Mapping

from attrs import frozen

from sollol_core.hookspecs import hookimpl
from sollol_core.types import (
    Candidate,
    Decision,
    Endpoint,
    FleetSnapshot,
    Health,
    InferenceRequest,
    NodeSnapshot,
    Role,
    model_key,
)

#: The policy name every decision of this plugin carries.
POLICY = "pin"
ENVIRONMENT_VARIABLE = "SOLLOL_PINS"
EXPECTED_FORM = ("model=node[|node...] separated by ';', "
                 "e.g. 'llama3.2=gpu-a|gpu-b;qwen3:8b=10.0.0.7:11434'")

#: Normalised model name (``llama3.2`` -> ``llama3.2:latest``) -> node names, in the order given.
Pins = Mapping[str, tuple[str, ...]]


def _malformed(problem: str) -> ValueError:
    return ValueError(f"{ENVIRONMENT_VARIABLE}: {problem}; expected {EXPECTED_FORM}")


def _name(text: str, entry: int, what: str) -> str:
    name = text.strip()
    if not name:
        raise _malformed(f"entry {entry} has an empty {what}")
    if any(c.isspace() for c in name):
        raise _malformed(f"entry {entry}: {what} {name!r} contains whitespace")
    return name


@functools.lru_cache(maxsize=16)
def parse_pins(text: str) -> Pins:
    """Parse a ``SOLLOL_PINS`` value; an empty (or blank) value pins nothing.

    Strict: every ``;``-separated entry must be ``model=node[|node...]`` with non-empty names, no
    model may be pinned twice and no entry may name a node twice. Raises :class:`ValueError`
    naming the variable, the faulty entry and the expected form.
    """
    pins: dict[str, tuple[str, ...]] = {}
    written: dict[str, tuple[int, str]] = {}
    if not text.strip():
        return types.MappingProxyType(pins)
    for entry, raw in enumerate(text.split(";"), start=1):
        if not raw.strip():
            raise _malformed(f"entry {entry} is empty")
        if raw.count("=") != 1:
            problem = "has no '='" if "=" not in raw else "has more than one '='"
            raise _malformed(f"entry {entry} {raw.strip()!r} {problem}")
        model_text, nodes_text = raw.split("=")
        model = _name(model_text, entry, "model")
        nodes = tuple(_name(n, entry, "node name") for n in nodes_text.split("|"))
        for node in nodes:
            if nodes.count(node) > 1:
                raise _malformed(f"entry {entry} names node {node!r} twice")
        key = model_key(model)
        if key in written:
            first, first_model = written[key]
            raise _malformed(f"model {model!r} is pinned twice "
                             f"(entry {first} {first_model!r} and entry {entry})")
        written[key] = (entry, model)
        pins[key] = nodes
    return types.MappingProxyType(pins)


def pins_from_environment(environ: Mapping[str, str] | None = None) -> Pins:
    """The pins in ``environ`` (default: the process environment, read now)."""
    return parse_pins((os.environ if environ is None else environ).get(ENVIRONMENT_VARIABLE, ""))


def matches(name: str, endpoint: Endpoint) -> bool:
    """A node name matches an endpoint's host, its ``host:port`` address or its full key."""
    wanted = name.casefold()
    return wanted in (endpoint.host.casefold(), endpoint.address.casefold(),
                      endpoint.key.casefold())


@frozen
class _Pinned:
    """One fleet node a pin names: where it came in the pin list and how to call it."""

    order: int
    label: str
    node: NodeSnapshot

    @property
    def usable(self) -> bool:
        return self.node.health is Health.UP and self.node.role is Role.NODE

    @property
    def spare(self) -> int:
        return max(self.node.parallel - self.node.in_flight, 0)

    @property
    def busy(self) -> str:
        return f"{self.node.in_flight}/{self.node.parallel} busy"

    @property
    def why_not(self) -> str:
        if self.node.role is not Role.NODE:
            return f"{self.node.role.value}, not a node"
        detail = f": {self.node.detail}" if self.node.detail else ""
        return f"{self.node.health.value}{detail}"


def _pinned_nodes(names: tuple[str, ...], fleet: FleetSnapshot) -> list[_Pinned]:
    found: list[_Pinned] = []
    seen: set[str] = set()
    for order, name in enumerate(names):
        hits = [n for n in fleet.nodes if matches(name, n.endpoint)]
        for node in hits:
            if node.endpoint.key not in seen:
                seen.add(node.endpoint.key)
                label = name if len(hits) == 1 else node.endpoint.address
                found.append(_Pinned(order, label, node))
    return found


def place(request: InferenceRequest, fleet: FleetSnapshot, pins: Pins) -> Decision | None:
    """The pure policy: a decision for a pinned model, ``None`` for any other."""
    names = pins.get(model_key(request.model))
    if names is None:
        return None
    pinned = f"{request.model} is pinned to {', '.join(names)}"
    found = _pinned_nodes(names, fleet)
    usable = sorted((p for p in found if p.usable), key=lambda p: (-p.spare, p.order))
    unusable = [p for p in found if not p.usable]
    candidates = (
        *(Candidate(p.node.endpoint, float(p.spare), f"{p.label}: {p.busy}") for p in usable),
        *(Candidate(p.node.endpoint, -1.0, f"{p.label}: {p.why_not}") for p in unusable),
    )
    if usable:
        best = usable[0]
        return Decision.whole(request, best.node.endpoint, policy=POLICY, candidates=candidates,
                              reason=f"{pinned}; chose {best.label} ({best.busy})")
    details = [f"{p.label}: {p.why_not}" for p in unusable]
    details += [f"{name}: not in the fleet" for name in names
                if not any(matches(name, n.endpoint) for n in fleet.nodes)]
    return Decision.refuse(
        request, policy=POLICY, candidates=candidates,
        reason=f"{pinned} and none of them is healthy ({'; '.join(details)})")


@hookimpl
def sollol_place(request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
    """Place pinned models on their pinned nodes; defer every other model."""
    return place(request, fleet, pins_from_environment())
