"""Run the gateway until SIGINT or SIGTERM, then stop everything it started."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sollol_core.config import GatewaySettings
from sollol_core.connections import ServerLimits
from sollol_core.gateway.app import create_app
from sollol_core.listening import PortInUseError, serve_until_signalled
from sollol_core.router import Router
from sollol_core.types import is_loopback

__all__ = ["PortInUseError", "event_loop_factory", "limits_of", "run", "serve"]


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): the gateway is event-loop bound."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(router: Router, *, ready: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM on a fresh event loop (uvloop when available)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(router, ready=ready))


async def serve(router: Router, *, ready: Callable[[str], None] = print) -> None:
    settings = router.settings.gateway
    notes = []
    if not is_loopback(settings.host) and not settings.api_keys:
        notes.append(f"warning: listening on {settings.host} without API keys: anyone who can "
                     "reach this address can use every node (set SOLLOL_API_KEYS)")
    await serve_until_signalled(create_app(router), settings.host, settings.port,
                                name="SOLLOL gateway", notes=notes, ready=ready,
                                limits=limits_of(settings))


def limits_of(settings: GatewaySettings) -> ServerLimits:
    """The connection limits and timeouts of the gateway's settings."""
    return ServerLimits(header_timeout_s=settings.header_timeout_s,
                        keepalive_timeout_s=settings.keepalive_timeout_s,
                        max_connections=settings.max_connections,
                        shutdown_timeout_s=settings.shutdown_timeout_s)
