"""The hardening suite: faults and hostile input, tried for real against ``sollol serve`` and
``sollol agent`` processes in front of Ollama emulators on loopback. Every scenario is bounded in
time and stops what it started."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest
from attrs import define

SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any SOLLOL or Ollama setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SOLLOL_", "OLLAMA_")) and k != "RPC_BACKENDS"}
    return {**env, **extra}


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Whether ``check()`` becomes true within ``within_s`` (polled every 50 ms)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@define
class Served:
    """A ``sollol serve`` or ``sollol agent`` process and its address."""

    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        """What it printed so far (only once it has exited: the pipe is read to the end)."""
        assert self.process.poll() is not None
        return self.process.stderr.read() if self.process.stderr else ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


async def start_process(args: Sequence[str], env: dict[str, str], *,
                        preexec_fn: Callable[[], None] | None = None,
                        health: str = "/health") -> Served:
    """Start ``sollol <args> --port P`` and wait (without blocking the loop) until it answers."""
    port = free_port()
    process = subprocess.Popen([SOLLOL, *args, "--port", str(port)], env=env,  # noqa: ASYNC220
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=preexec_fn)
    served = Served(process, port)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"sollol {args[0]} exited: {served.stderr()}")
            try:
                async with session.get(f"{served.url}{health}",
                                       timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return served
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    process.kill()
    process.wait(timeout=10)
    raise AssertionError(f"sollol {args[0]} did not come up")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    """``await serve(nodes, **env)``: a ``sollol serve`` process in front of the Ollama nodes at
    ``nodes`` (addresses), with only the ollama plugin loaded and a fast probe schedule; stopped
    (and checked to exit) at the end of the test."""
    started: list[Served] = []

    async def start(nodes: Sequence[str], *, preexec_fn: Callable[[], None] | None = None,
                    **env: str) -> Served:
        environ = clean_env(**{"OLLAMA_NODES": ",".join(nodes), "SOLLOL_LOAD_PLUGINS": "ollama",
                               "SOLLOL_HEALTH_INTERVAL": "0.3", **env})
        served = await start_process(["serve"], environ, preexec_fn=preexec_fn)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.stop()
