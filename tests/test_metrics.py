"""Prometheus metrics at /metrics: request counters and histograms, fleet gauges, API keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from aiohttp.test_utils import TestClient
from attrs import define, evolve, field
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from sollol_core.config import PluginSettings, Settings
from sollol_core.gateway.app import create_app
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import GiB, StaticBackend, node
from sollol_core.types import Health, InferenceRequest, Telemetry

A, B, C = "static://a:11434", "static://b:11434", "static://c:11434"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def isolated(*extra: tuple[str, object]) -> Plugins:
    return Plugins.load(PluginSettings(load=()), extra=extra)


def router_of(*extra: tuple[str, object], **flags: Any) -> Router:
    return Router.create(Settings.load(environ={}, flags=flags), isolated(*extra))


async def scrape(client: TestClient[Any, Any], **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@define
class Counting(StaticBackend):
    """A static backend whose last chunk carries Ollama's token counts."""

    async def _answer(self, request: InferenceRequest, target: Any) -> AsyncIterator[Chunk]:
        async for chunk in super()._answer(request, target):
            yield {**chunk, "prompt_eval_count": 7, "eval_count": 3} if chunk.get("done") else chunk


async def test_requests_fail_over_and_refusals_are_counted_by_outcome_and_backend(
        aiohttp_client: Any) -> None:
    # a is preferred (faster probe) but refuses once: the request fails over to b.
    backend = Counting([node("a", models=["m"], latency_ms=1.0),
                        node("b", models=["m"], latency_ms=900.0)], fail={"a": 1})
    client = await aiohttp_client(create_app(router_of(("static", backend))))
    ok = await client.post("/api/chat", json=chat("m"))
    assert ok.status == 200 and ok.headers["X-Sollol-Backend"] == B
    refused = await client.post("/api/chat", json=chat("ghost"))
    assert refused.status == 404

    samples = await scrape(client)
    requests = "sollol_requests_total"
    assert value(samples, requests, model="m", operation="chat", backend=B, outcome="ok") == 1
    # the model label of a model nobody has is not the client's to choose
    assert value(samples, requests, model="unknown", operation="chat", backend="none",
                 outcome="refused") == 1
    assert not [k for k in samples if ("model", "ghost") in k[1]]
    assert value(samples, requests, model="m", operation="chat", backend=A,
                 outcome="ok") is None
    assert value(samples, "sollol_attempt_errors_total", model="m", operation="chat",
                 backend=A, error_type="BackendError") == 1
    for histogram in ("sollol_request_duration_seconds", "sollol_time_to_first_chunk_seconds"):
        labels = {"model": "m", "operation": "chat", "backend": B}
        assert value(samples, f"{histogram}_count", **labels) == 1
        total = value(samples, f"{histogram}_sum", **labels)
        assert total is not None and 0 < total < 10
        assert value(samples, f"{histogram}_bucket", **labels, le="+Inf") == 1
        # refusals are not latencies
        assert value(samples, f"{histogram}_count", model="unknown", operation="chat",
                     backend="none") is None
    assert value(samples, "sollol_tokens_total", model="m", backend=B, type="input") == 7
    assert value(samples, "sollol_tokens_total", model="m", backend=B, type="output") == 3


async def test_a_request_failing_on_every_node_counts_as_an_error(aiohttp_client: Any) -> None:
    backend = StaticBackend([node("a", models=["m"])], fail={"a": 99})
    client = await aiohttp_client(create_app(router_of(("static", backend),
                                                       **{"routing.max_attempts": 2})))
    assert (await client.post("/api/chat", json=chat("m"))).status in (502, 503)
    samples = await scrape(client)
    errors = [v for (name, labels), v in samples.items()
              if name == "sollol_requests_total" and ("outcome", "error") in labels]
    assert errors == [1]
    assert value(samples, "sollol_attempt_errors_total", model="m", operation="chat",
                 backend=A, error_type="BackendError") == 1
    assert value(samples, "sollol_requests_total", model="m", operation="chat", backend=A,
                 outcome="ok") is None


class Machine:
    """Telemetry for host 'c', whose probe reports no devices."""

    @hookimpl
    def sollol_collect_telemetry(self) -> Awaitable[Telemetry]:
        async def measure() -> Telemetry:
            return Telemetry(host="c", source="cpu", taken_at=time.time(),
                             ram_total_bytes=32 * GiB, ram_free_bytes=5 * GiB)

        return measure()


async def test_node_health_free_memory_and_circuits_come_from_the_fleet(
        aiohttp_client: Any) -> None:
    c = evolve(node("c", models=["m"]), devices=())
    backend = StaticBackend([node("a", models=["m"], free_gib=6, latency_ms=1.0),
                             node("b", models=["m"], health=Health.DOWN), c],
                            fail={"a": 4})
    router = router_of(("static", backend), ("machine", Machine()))
    client = await aiohttp_client(create_app(router))
    for _ in range(4):  # a fails each time: its circuit opens after 4 failures
        assert (await client.post("/api/chat", json=chat("m"))).status == 200

    samples = await scrape(client)
    health = "sollol_node_health"
    assert value(samples, health, node=A, kind="static", role="node", state="up") == 1
    assert value(samples, health, node=A, kind="static", role="node", state="down") == 0
    assert value(samples, health, node=B, kind="static", role="node", state="down") == 1
    assert value(samples, health, node=B, kind="static", role="node", state="up") == 0
    free = "sollol_node_free_memory_bytes"
    assert value(samples, free, node=A, kind="static", role="node") == 6 * GiB
    assert value(samples, free, node=C, kind="static", role="node") == 5 * GiB  # telemetry
    assert value(samples, "sollol_node_total_memory_bytes", node=A, kind="static",
                 role="node") == 16 * GiB
    assert value(samples, "sollol_circuit_state", node=A, state="open") == 1
    assert value(samples, "sollol_circuit_state", node=A, state="closed") == 0
    assert value(samples, "sollol_circuit_failure_ratio", node=A) == 1.0
    assert value(samples, "sollol_circuit_state", node=C, state="closed") == 1
    assert not any(name == "sollol_coordinators" for name, _ in samples)  # no llama.cpp plugin


@define
class Gated(StaticBackend):
    """Sends its first chunk, then waits for the test to open the gate."""

    gate: asyncio.Event = field(factory=asyncio.Event)

    async def _answer(self, request: InferenceRequest, target: Any) -> AsyncIterator[Chunk]:
        yield {"model": request.model, "done": False, "response": "first "}
        await self.gate.wait()
        yield {"model": request.model, "done": True, "response": "last"}


async def test_in_flight_and_queue_depth_are_read_at_scrape_time(aiohttp_client: Any) -> None:
    backend = Gated([node("a", models=["m"], parallel=1)])
    client = await aiohttp_client(create_app(router_of(("static", backend))))
    body = {"model": "m", "prompt": "hi", "stream": True}
    running = await client.post("/api/generate", json=body)
    assert b"first" in await running.content.readline()
    waiting = asyncio.ensure_future(client.post("/api/generate", json=body))
    labels = {"node": A, "kind": "static", "role": "node"}
    deadline = time.monotonic() + 5
    while True:
        samples = await scrape(client)
        if value(samples, "sollol_queue_depth") == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "sollol_queue_depth") == 1
    assert value(samples, "sollol_node_in_flight", **labels) == 1
    assert value(samples, "sollol_node_parallel", **labels) == 1
    backend.gate.set()
    await running.read()
    await (await waiting).read()
    samples = await scrape(client)
    assert value(samples, "sollol_queue_depth") == 0
    assert value(samples, "sollol_node_in_flight", **labels) == 0
    assert value(samples, "sollol_requests_total", model="m", operation="generate", backend=A,
                 outcome="ok") == 2


class Jobs:
    """A plugin that runs jobs and says so in /metrics."""

    def __init__(self, running: int) -> None:
        self.running = running

    @hookimpl
    def sollol_metrics(self) -> list[Metric]:
        gauge = GaugeMetricFamily("myplugin_jobs", "Jobs the plugin runs.", labels=["queue"])
        gauge.add_metric(["default"], self.running)
        return [gauge]


class Broken:
    @hookimpl
    def sollol_metrics(self) -> list[Metric]:
        raise RuntimeError("cannot count")


async def test_plugins_add_metrics_read_at_each_scrape(aiohttp_client: Any) -> None:
    jobs = Jobs(2)
    router = router_of(("static", StaticBackend([node("a")])), ("broken", Broken()),
                       ("jobs", jobs))
    client = await aiohttp_client(create_app(router))
    assert value(await scrape(client), "myplugin_jobs", queue="default") == 2
    jobs.running = 5  # read when Prometheus scrapes, not when the plugin loaded
    samples = await scrape(client)
    assert value(samples, "myplugin_jobs", queue="default") == 5
    assert value(samples, "sollol_node_in_flight", node=A, kind="static", role="node") == 0


async def test_metrics_need_the_api_key_when_keys_are_configured(aiohttp_client: Any) -> None:
    router = router_of(("static", StaticBackend([node("a")])), **{"gateway.api_keys": ["k"]})
    client = await aiohttp_client(create_app(router))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/metrics?key=k")).status == 401  # only the dashboard takes ?key=
    samples = await scrape(client, Authorization="Bearer k")
    assert value(samples, "sollol_node_health", node=A, kind="static", role="node",
                 state="up") == 1
    assert (await client.get("/health")).status == 200


async def test_two_gateways_in_one_process_keep_their_own_metrics(aiohttp_client: Any) -> None:
    first = await aiohttp_client(create_app(router_of(("static", StaticBackend(
        [node("a", models=["m"])])))))
    second = await aiohttp_client(create_app(router_of(("static", StaticBackend(
        [node("b", models=["m"])])))))
    assert (await first.post("/api/chat", json=chat("m"))).status == 200
    one, two = await scrape(first), await scrape(second)
    assert value(one, "sollol_requests_total", model="m", operation="chat", backend=A,
                 outcome="ok") == 1
    assert not [k for k in two if k[0] == "sollol_requests_total"]
    assert value(two, "sollol_node_in_flight", node=B, kind="static", role="node") == 0
    assert value(two, "sollol_node_in_flight", node=A, kind="static", role="node") is None


async def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(router_of(("static", StaticBackend([node("a")])))))
    response = await client.get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await response.text()
    assert text.rstrip().endswith("# EOF") and "sollol_node_health" in text

