"""What the gateway and the agent share as servers: running until SIGINT or SIGTERM, and checking
a Bearer token."""

from __future__ import annotations

import asyncio
import errno
import hmac
import signal
from collections.abc import Callable, Sequence

from aiohttp import web

from sollol_core.errors import SollolError


class PortInUseError(SollolError):
    pass


def bearer_token(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer ...`` header; empty without one."""
    given = request.headers.get("Authorization", "")
    return given[7:] if given.lower().startswith("bearer ") else ""


def token_accepted(offered: str, accepted: Sequence[str]) -> bool:
    """Whether ``offered`` is one of ``accepted``, compared in constant time."""
    return any(hmac.compare_digest(offered.encode(), key.encode()) for key in accepted)


async def serve_until_signalled(app: web.Application, host: str, port: int, *, name: str,
                                notes: Sequence[str] = (),
                                ready: Callable[[str], None] = print) -> None:
    """Listen on ``host:port``, say so (then each of ``notes``), and run until SIGINT or SIGTERM;
    the application's cleanup (``cleanup_ctx``: routers, workers) runs on the way out, also when
    listening fails."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before anything starts: a signal cleans up
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {host} is already in use; stop what holds it or pick "
                    "another with --port") from None
            raise SollolError(f"cannot listen on {host}:{port}: {exc}") from None
        shown = f"[{host}]" if ":" in host else host
        ready(f"{name} on http://{shown}:{port} (Ctrl-C to stop)")
        for note in notes:
            ready(note)
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
