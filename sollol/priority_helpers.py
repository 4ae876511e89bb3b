"""Priorities by name and by agent role (1: can wait, 10: mission-critical; higher first)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sollol_core.api import Priority

__all__ = ["ROLE_PRIORITIES", "Priority", "get_priority_for_role"]

#: The priority of each agent role of a multi-agent pipeline; other roles get NORMAL.
ROLE_PRIORITIES: Mapping[str, int] = MappingProxyType({
    "user": Priority.URGENT, "interactive": Priority.URGENT, "assistant": Priority.HIGH,
    "planner": Priority.HIGH, "researcher": Priority.HIGH, "analyst": Priority.HIGH,
    "coder": Priority.HIGH, "reviewer": Priority.NORMAL, "editor": Priority.NORMAL,
    "writer": Priority.NORMAL, "summarizer": Priority.LOW, "background": Priority.LOW,
    "batch": Priority.BATCH, "indexer": Priority.BATCH,
})


def get_priority_for_role(role: str) -> int:
    """The priority for an agent's ``role`` (case-insensitive); NORMAL for a role not listed."""
    return ROLE_PRIORITIES.get(role.strip().lower(), Priority.NORMAL)
