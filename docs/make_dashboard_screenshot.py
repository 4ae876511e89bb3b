"""Make docs/images/dashboard.png: the dashboard of a made-up but realistic fleet.

Runs a real gateway on 127.0.0.1 over an in-process fleet (two Ollama GPU boxes, a laptop that
is down, two llama.cpp RPC workers holding a 70B model for a coordinator), sends it a few
requests (one fails over, one is sharded, one asks for a model nobody has), gives the plots five
minutes of synthetic history, and photographs the page in Debian's headless chromium.

    .venv/bin/python docs/make_dashboard_screenshot.py [--out docs/images/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web
from attrs import define, field
from playwright.async_api import async_playwright

from sollol_core.config import PluginSettings, Settings
from sollol_core.gateway.app import create_app
from sollol_core.gateway.common import ROUTER
from sollol_core.gateway.dashboard import HUB
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.observatory import Bucket
from sollol_core.panels import Panel, PanelGroup
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import StaticBackend
from sollol_core.types import (
    Decision,
    DeviceMemory,
    DeviceTelemetry,
    Endpoint,
    FleetSnapshot,
    Health,
    InferenceRequest,
    ModelInfo,
    NodeSnapshot,
    Role,
    ShardPlan,
    Telemetry,
)

GiB = 1024**3
HERE = Path(__file__).resolve().parent
BIG = "llama3.1:70b"
WORKERS = (Endpoint("llamacpp-rpc", "10.0.0.31", 50052),
           Endpoint("llamacpp-rpc", "10.0.0.32", 50052))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars"]


def snapshot(kind: str, host: str, port: int, *, devices: tuple[tuple[str, float, float], ...],
             models: Mapping[str, bool], health: Health = Health.UP, role: Role = Role.NODE,
             detail: str = "", version: str = "0.6.2", parallel: int = 4,
             in_flight: int = 0) -> NodeSnapshot:
    return NodeSnapshot(
        endpoint=Endpoint(kind, host, port, "config"), health=health, taken_at=time.time(),
        role=role, latency_ms=random.uniform(2, 9), version=version, detail=detail,
        devices=tuple(DeviceMemory(n, int(t * GiB), int(f * GiB)) for n, t, f in devices),
        models=tuple(ModelInfo(m, size_bytes=5 * GiB, loaded=loaded, vram_bytes=5 * GiB * loaded)
                     for m, loaded in models.items()),
        in_flight=in_flight, parallel=parallel)


FLEET = [
    snapshot("ollama", "10.0.0.11", 11434, in_flight=1,
             devices=(("RTX 4090 #0", 24, 6.1), ("RTX 4090 #1", 24, 17.4)),
             models={"llama3.1:8b": True, "qwen2.5:14b": True, "nomic-embed-text": True,
                     "mistral:7b": False}),
    snapshot("ollama", "10.0.0.12", 11434, devices=(("RTX 3090", 24, 13.8),),
             models={"llama3.1:8b": True, "mistral:7b": False, "nomic-embed-text": False}),
    snapshot("ollama", "10.0.0.23", 11434, devices=(), models={}, health=Health.DOWN,
             detail="cannot connect: connection refused", version=""),
    *(snapshot("llamacpp-rpc", w.host, w.port, role=Role.WORKER, health=Health.BUSY,
               devices=((gpu, 24, free),), models={BIG: True}, version="rpc v3", parallel=1,
               detail="held by the coordinator of llama3.1:70b")
      for w, gpu, free in zip(WORKERS, ("RTX 3090", "RTX A5000"), (2.9, 3.6), strict=True)),
]


@define
class Fleet(StaticBackend):
    """Answers as the node it was given, after a moment that depends on the node."""

    delays: dict[str, float] = field(factory=dict)
    slow_models: dict[str, float] = field(factory=dict)

    def _owns(self, endpoint: Endpoint | None) -> bool:
        return endpoint is not None and any(n.endpoint.key == endpoint.key for n in self.nodes)

    async def _answer(self, request: InferenceRequest, target: Endpoint) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.slow_models.get(request.model, self.delays.get(target.host, 0.3)))
        async for chunk in super()._answer(request, target):
            yield chunk


class Coordinator:
    """The llama.cpp plugin's part: the 70B model over two RPC workers, 36 and 44 layers."""

    @hookimpl(tryfirst=True)
    def sollol_place(self, request: InferenceRequest,
                     fleet: FleetSnapshot) -> Decision | None:
        if request.model != BIG:
            return None
        plan = ShardPlan(workers=WORKERS, tensor_split=(0.45, 0.55), layers=(36, 44))
        return Decision.sharded(request, plan, policy="llamacpp", reason=(
            "70.55B parameters is over the distributed_threshold_params of 20B; "
            "reusing its coordinator on 2 RPC workers"))

    @hookimpl
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        if decision.plan is None:
            return None

        async def answer() -> AsyncIterator[Chunk]:
            await asyncio.sleep(1.4)
            yield {"model": request.model, "done": True,
                   "message": {"role": "assistant", "content": "..."}}

        return answer()

    @hookimpl
    def sollol_dashboard_panels(self) -> Panel:
        """The panel the llama.cpp plugin draws for this coordinator."""
        return Panel("llamacpp-coordinators", "Coordinators and layers",
                     ("RPC worker", "layers", "share"), (PanelGroup(BIG, (
                         (WORKERS[0].address, "layers 0–35 (36)", "45% of tensors"),
                         (WORKERS[1].address, "layers 36–79 (44)", "55% of tensors")),
                         status="ok", detail="http://127.0.0.1:38211"),))


class Machines:
    """What sollol-cpu and sollol-nvml would report of two of the machines."""

    @hookimpl
    def sollol_collect_telemetry(self) -> Awaitable[list[Telemetry]]:
        async def measure() -> list[Telemetry]:
            now = time.time()
            return [
                Telemetry(host="10.0.0.11", source="cpu+nvml", taken_at=now, cpu_count=32,
                          cpu_percent=23.0, load_1m=4.2, ram_total_bytes=128 * GiB,
                          ram_free_bytes=81 * GiB, devices=(
                              DeviceTelemetry(0, "RTX 4090 #0", memory_total_bytes=24 * GiB,
                                              memory_free_bytes=int(6.1 * GiB),
                                              utilisation_pct=87, temperature_c=71),
                              DeviceTelemetry(1, "RTX 4090 #1", memory_total_bytes=24 * GiB,
                                              memory_free_bytes=int(17.4 * GiB),
                                              utilisation_pct=12, temperature_c=48))),
                Telemetry(host="10.0.0.31", source="cpu+nvml", taken_at=now, cpu_count=16,
                          cpu_percent=9.0, load_1m=1.1, ram_total_bytes=64 * GiB,
                          ram_free_bytes=40 * GiB, devices=(
                              DeviceTelemetry(0, "RTX 3090", memory_total_bytes=24 * GiB,
                                              memory_free_bytes=int(2.9 * GiB),
                                              utilisation_pct=64, temperature_c=66),)),
            ]

        return measure()


def history(app: web.Application) -> None:
    """Five minutes of made-up traffic, so that the plots show something."""
    observatory = app[HUB].observatory
    now = int(time.time())
    rng = random.Random(7)
    for second in range(now - 299, now):
        wave = 3 + 2 * math.sin(second / 40) + rng.random() * 2
        requests = max(0, round(wave))
        if not requests:
            continue
        mean = 700 + 250 * math.sin(second / 55) + rng.random() * 60
        observatory.buckets.append(Bucket(second, requests, int(rng.random() < 0.03),
                                          mean * requests, mean * (1.4 + 0.3 * rng.random())))


async def traffic(url: str) -> None:
    async with aiohttp.ClientSession() as client:
        async def chat(model: str) -> None:
            await client.post(f"{url}/api/chat", json={
                "model": model, "messages": [{"role": "user", "content": "Hello!"}]})

        async def embed() -> None:
            await client.post(f"{url}/api/embed", json={"model": "nomic-embed-text",
                                                         "input": "a sentence"})

        await chat("llama3.1:8b")
        await asyncio.gather(chat("llama3.1:8b"), chat("mistral:7b"), embed())
        await chat(BIG)
        await chat("deepseek-r1:671b")  # nobody has it: refused


async def main(out: Path) -> None:
    backend = Fleet(FLEET, delays={"10.0.0.11": 0.6, "10.0.0.12": 0.9},
                    slow_models={"qwen2.5:14b": 60.0})
    settings = Settings.load(environ={}, flags={"health.interval_s": 3600})
    plugins = Plugins.load(PluginSettings(load=()), extra=[
        ("fleet", backend), ("llamacpp", Coordinator()), ("telemetry", Machines())])
    app = create_app(Router.create(settings, plugins))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    try:
        history(app)
        await traffic(url)
        # The node the next llama3.1:8b request goes to refuses it once: it fails over.
        first = app[ROUTER].decide(InferenceRequest.chat("llama3.1:8b", []))
        assert first.target is not None, first
        backend.fail[first.target.host] = 1
        await chat_once(url, "llama3.1:8b")
        running = asyncio.ensure_future(chat_once(url, "qwen2.5:14b"))  # still running
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=ARGS)
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            await page.goto(f"{url}/dashboard")
            await page.locator("tr.decision .b-running").first.wait_for()
            await page.wait_for_timeout(1500)
            out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(out), full_page=True)
            await browser.close()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    finally:
        await runner.cleanup()


async def chat_once(url: str, model: str) -> None:
    async with aiohttp.ClientSession() as client:
        await client.post(f"{url}/api/chat", json={
            "model": model, "messages": [{"role": "user", "content": "Once more"}]})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images" / "dashboard.png")
    out = parser.parse_args().out
    asyncio.run(main(out))
    size = out.stat().st_size
    print(f"wrote {out} ({size // 1024} KiB)")
    if size > 300_000:
        raise SystemExit("the screenshot is over 300 kB: keep the repository light")
