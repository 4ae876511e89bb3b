"""What the gateway and the agent share as servers: running until SIGINT or SIGTERM (with the
connection limits of :mod:`sollol_core.connections`), and checking a Bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from aiohttp import web

from sollol_core.connections import GuardedSite, ServerLimits
from sollol_core.errors import SollolError


class PortInUseError(SollolError):
    pass


def bearer_token(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer ...`` header; empty without one."""
    given = request.headers.get("Authorization", "")
    return given[7:] if given.lower().startswith("bearer ") else ""


def token_accepted(offered: str, accepted: Sequence[str]) -> bool:
    """Whether ``offered`` is one of ``accepted``, compared in constant time. Any bytes a client
    sends (undecodable ones arrive as surrogates) are simply a wrong token."""
    given = offered.encode("utf-8", "surrogateescape")
    return any(hmac.compare_digest(given, key.encode()) for key in accepted)


def app_runner(app: web.Application, limits: ServerLimits) -> web.AppRunner:
    """The runner SOLLOL's servers (and their benchmark) serve ``app`` with; listen through a
    :class:`~sollol_core.connections.GuardedSite` with the same ``limits``."""
    # handler_cancellation: a client that leaves cancels its handler, so a request nobody
    # waits for leaves the queue or closes its upstream request instead of running on
    return web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                         keepalive_timeout=limits.keepalive_timeout_s,
                         shutdown_timeout=limits.shutdown_timeout_s)


async def serve_until_signalled(app: web.Application, host: str, port: int, *, name: str,
                                notes: Sequence[str] = (),
                                ready: Callable[[str], None] = print,
                                limits: ServerLimits | None = None) -> None:
    """Listen on ``host:port`` with ``limits`` on client connections, say so (then each of
    ``notes``), and run until SIGINT or SIGTERM; then stop listening, give running requests
    ``limits.shutdown_timeout_s`` to finish and run the application's cleanup (``cleanup_ctx``:
    routers, workers), also when listening fails. A second signal meanwhile stops at once."""
    limits = limits or ServerLimits()
    runner = app_runner(app, limits)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # the second: requests still running or cleanup under way
            stop_now(sig)
        else:
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # before anything starts: a signal cleans up
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await runner.setup()
        site = GuardedSite(runner, host, port, limits=limits)
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


def stop_now(sig: signal.Signals) -> NoReturn:
    """Exit at once with ``128 + sig`` (130 for SIGINT, 143 for SIGTERM), SIGKILLing every
    process this one started (llama.cpp workers and coordinators): nothing is left running."""
    try:
        with contextlib.suppress(OSError, ValueError):  # no stderr to tell: stop all the same
            print("second signal: stopping now", file=sys.stderr, flush=True)
        kill_descendants()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(128 + sig)


def kill_descendants(wait_s: float = 2.0) -> None:
    """SIGKILL this process's children and theirs, and wait up to ``wait_s`` for them to end."""
    import psutil

    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for process in descendants:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(descendants, timeout=wait_s)
