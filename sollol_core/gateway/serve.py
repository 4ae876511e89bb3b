"""Run the gateway until SIGINT or SIGTERM, then stop everything it started."""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Callable

from aiohttp import web

from sollol_core.errors import SollolError
from sollol_core.gateway.app import create_app
from sollol_core.router import Router
from sollol_core.types import is_loopback


class PortInUseError(SollolError):
    pass


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
    runner = web.AppRunner(create_app(router), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {settings.port} on {settings.host} is already in use; stop what holds "
                    "it or pick another with --port") from None
            raise SollolError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        ready(f"SOLLOL gateway on http://{host}:{settings.port} (Ctrl-C to stop)")
        if not is_loopback(settings.host) and not settings.api_keys:
            ready(f"warning: listening on {settings.host} without API keys: anyone who can reach "
                  "this address can use every node (set SOLLOL_API_KEYS)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
