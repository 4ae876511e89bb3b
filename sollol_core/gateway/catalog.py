"""The fleet's models as one catalogue: each model once, with the nodes that hold or run it."""

from __future__ import annotations

from attrs import frozen

from sollol_core.types import FleetSnapshot, Health, ModelInfo, model_key


@frozen
class CatalogEntry:
    """One model of the fleet: the freshest description any node gave, and who has it."""

    info: ModelInfo
    nodes: tuple[str, ...]
    loaded_on: tuple[str, ...]


def catalogue(fleet: FleetSnapshot, *, loaded_only: bool = False) -> list[CatalogEntry]:
    """Models on healthy nodes, newest ``modified_at`` first (``/api/tags`` order); with
    ``loaded_only`` just those in memory somewhere, latest expiry first (``/api/ps`` order)."""
    found: dict[str, tuple[ModelInfo, list[str], list[str]]] = {}
    for node in fleet.nodes:
        if node.health is not Health.UP:
            continue
        for model in node.models:
            if loaded_only and not model.loaded:
                continue
            key = model_key(model.name)
            info, holders, loaded = found.setdefault(key, (model, [], []))
            if model.modified_at > info.modified_at:
                found[key] = (model, holders, loaded)
            holders.append(node.endpoint.address)
            if model.loaded:
                loaded.append(node.endpoint.address)
    entries = [CatalogEntry(info, tuple(holders), tuple(loaded))
               for info, holders, loaded in found.values()]
    if loaded_only:
        return sorted(entries, key=lambda e: e.info.expires_at, reverse=True)
    return sorted(entries, key=lambda e: (e.info.modified_at, e.info.name), reverse=True)
