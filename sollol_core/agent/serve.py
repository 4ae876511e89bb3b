"""Run ``sollol agent`` until SIGINT or SIGTERM; refuse an address that would expose it unsafely.

An agent starts processes on its machine when asked, so it listens on loopback unless told
otherwise: another address needs ``allow_remote`` (``--allow-remote``) and a token.
"""

from __future__ import annotations

import asyncio
import errno
import signal
from collections.abc import Callable

from aiohttp import web

from sollol_core.agent.app import create_agent_app
from sollol_core.config import Settings
from sollol_core.errors import SollolError
from sollol_core.plugins import Plugins
from sollol_core.types import is_loopback

REMOTE_WARNING = (
    "warning: the agent listens on {host}: whoever can reach it and holds the token can read this "
    "machine's telemetry and start or stop RPC workers here (which are themselves "
    "unauthenticated). Expose it only on a network you trust.")


class UnsafeAddress(SollolError):
    """The agent would listen beyond loopback without the choice or the token that needs."""


class AgentPortInUse(SollolError):
    pass


def check_address(settings: Settings) -> list[str]:
    """Warnings to print before listening; raises :class:`UnsafeAddress` if it must not."""
    agent = settings.agent
    if is_loopback(agent.host):
        return []
    if not agent.allow_remote:
        raise UnsafeAddress(
            f"refusing to listen on {agent.host}: the agent starts processes on this machine; "
            "pass --allow-remote to listen beyond loopback (with a token)")
    if not settings.discovery.agent_token:
        raise UnsafeAddress(
            f"refusing to listen on {agent.host} without a token: set SOLLOL_AGENT_TOKEN (or "
            "[discovery] agent_token, or --token), and the same on the router")
    return [REMOTE_WARNING.format(host=agent.host)]


def run(plugins: Plugins, settings: Settings, *, ready: Callable[[str], None] = print) -> None:
    """Check the address, then serve until SIGINT or SIGTERM on a fresh event loop."""
    warnings = check_address(settings)
    asyncio.run(serve(plugins, settings, ready=ready, warnings=warnings))


async def serve(plugins: Plugins, settings: Settings, *, ready: Callable[[str], None] = print,
                warnings: list[str] | None = None) -> None:
    agent = settings.agent
    app = create_agent_app(plugins, settings, token=settings.discovery.agent_token)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before anything starts: a signal cleans up
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(runner, agent.host, agent.port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AgentPortInUse(
                    f"port {agent.port} on {agent.host} is already in use; stop what holds it "
                    "or pick another with --port") from None
            raise SollolError(f"cannot listen on {agent.host}:{agent.port}: {exc}") from None
        host = f"[{agent.host}]" if ":" in agent.host else agent.host
        ready(f"SOLLOL agent on http://{host}:{agent.port} (Ctrl-C to stop)")
        for line in warnings or ():
            ready(line)
        if not settings.discovery.agent_token:
            ready("note: no agent token: any local process may use this agent")
        await stop.wait()
    finally:
        await runner.cleanup()  # plugins' cleanup_ctx: their workers stop here
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
