"""What the llama.cpp plugin has learnt, as placement sees it: a frozen value in the fleet
snapshot (``fleet.fact(ShardingFacts)``), so that placement stays a pure function of its
arguments."""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

from sollol_llamacpp.estimate import ModelFootprint


@frozen
class ShardingFacts:
    """Models' footprints, unreadable GGUFs, workers held by coordinators, memory corrections."""

    #: What each model needs, from its GGUF's header, by model key.
    footprints: Mapping[str, ModelFootprint] = field(factory=dict)
    #: Why a model's GGUF could not be read, by model key.
    unreadable: Mapping[str, str] = field(factory=dict)
    #: The workers each model's coordinator holds or is taking, by model key.
    held: Mapping[str, frozenset[str]] = field(factory=dict)
    #: The memory correction learnt from each model's loads on RPC workers, by model key.
    factors: Mapping[str, float] = field(factory=dict)
    #: Keys of the models whose coordinator is starting or answering: the others' coordinators
    #: are idle, and may give their workers to another model.
    busy: frozenset[str] = frozenset()

    def claimed(self, *, besides: str) -> frozenset[str]:
        """Keys of the workers held by coordinators of models other than the key ``besides``
        (a worker serves one coordinator)."""
        return frozenset().union(*(ws for k, ws in self.held.items() if k != besides))

    def idle_holders(self, *, besides: str) -> dict[str, frozenset[str]]:
        """The workers held by idle coordinators of models other than ``besides``, by model
        key: stopping such a coordinator frees its workers for another model."""
        return {k: ws for k, ws in self.held.items() if k != besides and k not in self.busy}
