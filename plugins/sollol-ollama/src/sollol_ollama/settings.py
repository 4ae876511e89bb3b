"""The ``[ollama]`` settings section: which Ollama nodes to use and how many requests each
serves at once."""

from __future__ import annotations

from typing import Any

import attrs
from attrs import field, frozen

from sollol_core.config import Flag, InvalidSetting, SettingsSection, addresses, positive
from sollol_core.types import Endpoint

DEFAULT_PORT = 11434


def _split(item: str) -> tuple[str, int | None]:
    """``"host:port=4"`` -> ``("host:port", 4)``; no ``=N``: ``(item, None)``."""
    address, sep, slots = item.rpartition("=")
    if not sep:
        return item, None
    return address, int(slots)


def _nodes(_: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for item in value:
        try:
            address, slots = _split(item)
        except ValueError:
            raise InvalidSetting(attribute.name, f"expected host:port or host:port=SLOTS, got "
                                 f"{item!r} (SLOTS: a whole number)") from None
        if slots is not None and slots < 1:
            raise InvalidSetting(attribute.name, f"{item!r}: a node serves at least 1 request")
        addresses(DEFAULT_PORT)(_, attribute, (address,))


def _slots(_: Any, attribute: attrs.Attribute[dict[str, int]], value: dict[str, int]) -> None:
    addresses(DEFAULT_PORT)(_, attribute, tuple(value))
    for address, slots in value.items():
        if not isinstance(slots, int) or slots < 1:
            raise InvalidSetting(attribute.name,
                                 f"{address!r}: expected a whole number of slots, at least 1")


def _key(address: str) -> str:
    return Endpoint.parse("ollama", address, default_port=DEFAULT_PORT).address


@frozen
class OllamaSettings:
    """Ollama nodes (``[ollama]``)."""

    #: Nodes to use ("host:port", default port 11434), besides those found on their own; a node
    #: may say how many requests it serves at once: "10.0.0.5:11434=4".
    nodes: tuple[str, ...] = field(default=(), validator=_nodes)
    #: Requests each node serves at once: its OLLAMA_NUM_PARALLEL (Ollama's default is 1).
    parallel: int = field(default=1, validator=positive)
    #: Slots of particular nodes, where they differ: {"10.0.0.5:11434" = 4}.
    slots: dict[str, int] = field(factory=dict, validator=_slots)

    def addresses(self) -> tuple[str, ...]:
        """The configured nodes' addresses (without their slot counts)."""
        return tuple(_split(item)[0] for item in self.nodes)

    def slots_for(self, address: str) -> int | None:
        """The slots configured for the node at ``address`` (``slots``, else its ``=N`` in
        ``nodes``), or None."""
        key = _key(address)
        for configured, slots in self.slots.items():
            if _key(configured) == key:
                return slots
        for item in self.nodes:
            named, count = _split(item)
            if count is not None and _key(named) == key:
                return count
        return None


SECTION = SettingsSection(
    name="ollama",
    type=OllamaSettings,
    environment={"SOLLOL_OLLAMA_NODES": "nodes", "OLLAMA_NODES": "nodes",
                 "SOLLOL_OLLAMA_PARALLEL": "parallel"},
    moved={"discovery.ollama_nodes": "nodes", "discovery.ollama_parallel": "parallel"},
    flags=(Flag("--ollama-node", "nodes", "Also use this Ollama node (repeatable).",
                metavar="HOST:PORT"),),
)
