"""SOLLOL's Python API as its guide writes it: ``from sollol import HybridRouter, OllamaPool``.

A thin layer over :mod:`sollol_core` and its plugins, shaped like the original SOLLOL (the
``_routing`` keys its guide prints, ``router.coordinator``, ``get_stats()``). These classes are
async; :mod:`sollol.sync_wrapper` has the blocking ones.
"""

from __future__ import annotations

from sollol.hybrid_router import MODEL_PROFILES, HybridRouter
from sollol.pool import OllamaPool
from sollol.priority_helpers import Priority, get_priority_for_role

__all__ = ["MODEL_PROFILES", "HybridRouter", "OllamaPool", "Priority", "get_priority_for_role"]
