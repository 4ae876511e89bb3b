"""The GGUF file behind an Ollama model name, read from Ollama's own store (no Ollama server
needed): what a coordinator loads to shard that model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sollol_core.plugins import plugin_attribute

__all__ = ["OllamaGGUFResolver"]


class OllamaGGUFResolver:
    """Finds a model's GGUF blob in the Ollama stores of this machine (``OLLAMA_MODELS``,
    ``~/.ollama/models``, the system service's)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ

    def get_gguf_path(self, model: str) -> str | None:
        """The GGUF path of ``model`` (e.g. ``llama3.1:70b``), or None when no store has it."""
        resolve = plugin_attribute("sollol_llamacpp.ollama_store", "resolve_gguf",
                                   "sollol-llamacpp")
        not_found = plugin_attribute("sollol_llamacpp.ollama_store", "OllamaStoreError",
                                     "sollol-llamacpp")
        try:
            path: Path = resolve(model, environ=self.environ)
        except not_found:
            return None
        return str(path)
