"""OpenAI-compatible API (placeholder: routes arrive in this module)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register ``/v1/*`` on ``app``."""
