"""Run ``sollol agent`` until SIGINT or SIGTERM; refuse an address that would expose it unsafely.

An agent starts processes on its machine when asked, so it always has a token (the configured one,
else the one in its token file, made on first start) and listens on loopback unless told
otherwise: another address needs ``allow_remote`` (``--allow-remote``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sollol_core.agent.app import create_agent_app
from sollol_core.agent.token import resolve_token, shared_with_others, token_path
from sollol_core.config import Settings
from sollol_core.connections import ServerLimits
from sollol_core.errors import SollolError
from sollol_core.listening import serve_until_signalled
from sollol_core.plugins import Plugins
from sollol_core.types import is_loopback

REMOTE_WARNING = (
    "warning: the agent listens on {host}: whoever can reach it and holds the token can read this "
    "machine's telemetry and start or stop RPC workers here (which are themselves "
    "unauthenticated). Expose it only on a network you trust.")
TOKEN_FILE_NOTE = ("agent token in {path} (give routers the same: SOLLOL_AGENT_TOKEN or that "
                   "file)")
SHARED_FILE_WARNING = ("warning: other users may read the agent token file {path}: "
                       "chmod 600 it")


class UnsafeAddress(SollolError):
    """The agent would listen beyond loopback without the choice that needs."""


def check_address(settings: Settings) -> list[str]:
    """Warnings to print before listening; raises :class:`UnsafeAddress` if it must not."""
    agent = settings.agent
    if is_loopback(agent.host):
        return []
    if not agent.allow_remote:
        raise UnsafeAddress(
            f"refusing to listen on {agent.host}: the agent starts processes on this machine; "
            "pass --allow-remote to listen beyond loopback")
    return [REMOTE_WARNING.format(host=agent.host)]


def run(plugins: Plugins, settings: Settings, *, ready: Callable[[str], None] = print) -> None:
    """Check the address, then serve until SIGINT or SIGTERM on a fresh event loop."""
    warnings = check_address(settings)
    asyncio.run(serve(plugins, settings, ready=ready, warnings=warnings))


async def serve(plugins: Plugins, settings: Settings, *, ready: Callable[[str], None] = print,
                warnings: list[str] | None = None) -> None:
    """Serve with the configured token, else the token file's (created when missing)."""
    agent = settings.agent
    token = resolve_token(settings, create=True)
    notes = list(warnings or ())
    if not settings.discovery.agent_token:
        path = token_path(settings)
        notes.append(TOKEN_FILE_NOTE.format(path=path))
        if shared_with_others(path):
            notes.append(SHARED_FILE_WARNING.format(path=path))
    # the app's cleanup_ctx stops the plugins' workers on the way out
    await serve_until_signalled(
        create_agent_app(plugins, settings, token=token),
        agent.host, agent.port, name="SOLLOL agent", notes=notes, ready=ready,
        limits=ServerLimits())  # the gateway's default timeouts and connection limit
