from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.plugins import environment_variables
from sollol_core.router import Router


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*environment_variables(), "SOLLOL_CONFIG", "OLLAMA_HOST"]:
        monkeypatch.delenv(name, raising=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def gateway(nodes: list[str], **env: str) -> AsyncIterator[tuple[str, Router]]:
    """A SOLLOL gateway on loopback in front of ``nodes`` (Ollama addresses); yields its URL.

    Only the ollama plugin and the built-in policy load, so the test sees just these nodes.
    """
    settings = Settings.load(environ={"OLLAMA_NODES": ",".join(nodes),
                                      "SOLLOL_LOAD_PLUGINS": "ollama",
                                      "SOLLOL_HEALTH_INTERVAL": "0.2", **env})
    router = Router.create(settings)
    runner = web.AppRunner(create_app(router))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", router
    finally:
        await runner.cleanup()
