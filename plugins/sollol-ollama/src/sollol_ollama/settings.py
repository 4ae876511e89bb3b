"""The ``[ollama]`` settings section: which Ollama nodes to use and how many requests each
serves at once."""

from __future__ import annotations

from attrs import field, frozen

from sollol_core.config import Flag, SettingsSection, addresses, positive


@frozen
class OllamaSettings:
    """Ollama nodes (``[ollama]``)."""

    #: Nodes to use ("host:port", default port 11434), besides those found on their own.
    nodes: tuple[str, ...] = field(default=(), validator=addresses(11434))
    #: Requests each node serves at once: its OLLAMA_NUM_PARALLEL (Ollama's default is 1).
    parallel: int = field(default=1, validator=positive)


SECTION = SettingsSection(
    name="ollama",
    type=OllamaSettings,
    environment={"SOLLOL_OLLAMA_NODES": "nodes", "OLLAMA_NODES": "nodes",
                 "SOLLOL_OLLAMA_PARALLEL": "parallel"},
    moved={"discovery.ollama_nodes": "nodes", "discovery.ollama_parallel": "parallel"},
    flags=(Flag("--ollama-node", "nodes", "Also use this Ollama node (repeatable).",
                metavar="HOST:PORT"),),
)
