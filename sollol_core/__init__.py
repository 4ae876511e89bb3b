"""SOLLOL: one endpoint and one Python API in front of a fleet of Ollama and llama.cpp machines.

Importing this package loads no plugin and starts nothing; the public names below are imported
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sollol_core.api import HybridRouter, OllamaPool, Priority
    from sollol_core.config import Settings
    from sollol_core.plugins import Plugins
    from sollol_core.router import Router

__all__ = ["HybridRouter", "OllamaPool", "Plugins", "Priority", "Router", "Settings"]

_HOMES = {
    "HybridRouter": "sollol_core.api",
    "OllamaPool": "sollol_core.api",
    "Priority": "sollol_core.api",
    "Settings": "sollol_core.config",
    "Plugins": "sollol_core.plugins",
    "Router": "sollol_core.router",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'sollol_core' has no attribute {name!r}")
