"""The dashboard: its page, its server-sent state, what it remembers, and its API-key rules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from attrs import evolve

from sollol_core.config import PluginSettings, Settings
from sollol_core.gateway.app import create_app
from sollol_core.gateway.common import ROUTER
from sollol_core.gateway.dashboard import HUB
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.observatory import Observatory
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import StaticBackend, node
from sollol_core.types import (
    Decision,
    Endpoint,
    FleetSnapshot,
    Health,
    InferenceRequest,
    RequestRecord,
    ShardPlan,
)

A, B = "static://a:11434", "static://b:11434"


def router_of(*extra: tuple[str, object], **flags: Any) -> Router:
    return Router.create(Settings.load(environ={}, flags=flags),
                         Plugins.load(PluginSettings(load=()), extra=extra))


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def next_state(response: aiohttp.ClientResponse, timeout: float = 5.0) -> dict[str, Any]:
    """The next ``state`` event of a server-sent event stream."""
    event = ""
    async with asyncio.timeout(timeout):
        while True:
            line = (await response.content.readline()).decode()
            assert line, "the event stream ended"
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "state":
                state: dict[str, Any] = json.loads(line[5:])
                return state


async def test_the_event_stream_sends_nodes_and_the_last_decision_with_its_reason(
        aiohttp_client: Any) -> None:
    backend = StaticBackend([node("a", models=["m"]), node("b", models=["m"], in_flight=3),
                             node("c", models=["other"], health=Health.DOWN)])
    client = await aiohttp_client(create_app(router_of(("static", backend))))
    events = await client.get("/dashboard/events")
    assert events.status == 200
    assert events.headers["Content-Type"].startswith("text/event-stream")
    first = await next_state(events)
    assert {n["address"]: n["health"] for n in first["nodes"]} == {
        "a:11434": "up", "b:11434": "up", "c:11434": "down"}
    assert first["decisions"] == []

    answered = await client.post("/api/chat", json=chat("m"))
    assert answered.status == 200
    reason = answered.headers["X-Sollol-Reason"]
    deadline = time.monotonic() + 5
    state = await next_state(events)
    while not state["decisions"] or state["decisions"][0]["outcome"] == "running":
        assert time.monotonic() < deadline, state["decisions"]
        state = await next_state(events)
    (decision,) = state["decisions"]
    assert (decision["model"], decision["node"], decision["outcome"]) == ("m", "a:11434", "ok")
    assert decision["reason"] == reason and decision["policy"] == "default"
    assert state["totals"]["requests"] == 1 and state["totals"]["ok"] == 1
    assert sum(state["series"]["requests"]) == 1 and len(state["series"]["requests"]) == 300
    a = next(n for n in state["nodes"] if n["key"] == A)
    assert a["devices"][0]["free_bytes"] == a["free_bytes"] > 0
    assert [m["name"] for m in a["models"]] == ["m"]
    assert a["circuit"]["state"] == "closed"
    events.close()


async def test_a_refusal_and_a_fail_over_show_in_the_decisions(aiohttp_client: Any) -> None:
    backend = StaticBackend([node("a", models=["m"], latency_ms=1.0),
                             node("b", models=["m"], latency_ms=900.0)], fail={"a": 1})
    client = await aiohttp_client(create_app(router_of(("static", backend))))
    assert (await client.post("/api/chat", json=chat("m"))).status == 200
    assert (await client.post("/api/chat", json=chat("<b>ghost</b>"))).status == 404
    state = await (await client.get("/dashboard/state")).json()
    ghost, ran, failed = state["decisions"]  # newest first
    assert (ghost["model"], ghost["placed"], ghost["outcome"]) == ("<b>ghost</b>", False,
                                                                   "refused")
    assert "<b>ghost</b>" in ghost["reason"]
    assert (ran["node"], ran["outcome"]) == ("b:11434", "ok")
    assert (failed["node"], failed["outcome"]) == ("a:11434", "failed")
    assert "a refused the request" in failed["error"]
    assert state["totals"] == {"requests": 2, "ok": 1, "errors": 0, "refused": 1,
                               "input_tokens": 0, "output_tokens": 0}


WORKERS = (Endpoint("llamacpp-rpc", "w1", 50052), Endpoint("llamacpp-rpc", "w2", 50052))


class Sharding:
    """Places model 'big' over two RPC workers (10 and 18 layers), runs it, and reports the
    coordinator the way the llama.cpp plugin's status does."""

    @hookimpl(tryfirst=True)
    def sollol_place(self, request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
        if request.model != "big":
            return None
        plan = ShardPlan(workers=WORKERS, tensor_split=(0.36, 0.64), layers=(10, 18))
        return Decision.sharded(request, plan, policy="llamacpp", reason="too big for one node")

    @hookimpl
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        if decision.plan is None:
            return None

        async def answer() -> AsyncIterator[Chunk]:
            yield {"model": request.model, "done": True, "message": {"role": "assistant",
                                                                      "content": "sharded"}}

        return answer()

    @hookimpl
    def sollol_status(self) -> Mapping[str, Any]:
        return {"coordinators": [
            {"model": "big", "url": "http://127.0.0.1:9001", "alive": True, "pid": 1,
             "workers": ["w1:50052", "w2:50052"], "tensor_split": [0.36, 0.64]},
            "not a coordinator"]}


async def test_coordinators_show_which_layers_sit_on_which_worker(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(router_of(
        ("static", StaticBackend([node("a", models=["m"])])), ("shards", Sharding()))))
    state = await (await client.get("/dashboard/state")).json()
    (coordinator,) = state["coordinators"]
    assert [(w["worker"], w["layers"]) for w in coordinator["workers"]] == [
        ("w1:50052", None), ("w2:50052", None)]  # no plan seen yet: shares only
    assert coordinator["workers"][1]["share"] == 0.64

    assert (await client.post("/api/chat", json=chat("big"))).status == 200
    state = await (await client.get("/dashboard/state")).json()
    (coordinator,) = state["coordinators"]
    assert [(w["worker"], w["first_layer"], w["last_layer"]) for w in coordinator["workers"]] == [
        ("w1:50052", 0, 9), ("w2:50052", 10, 27)]
    (decision,) = state["decisions"]
    assert decision["shards"] == [{"worker": "w1:50052", "layers": 10},
                                  {"worker": "w2:50052", "layers": 18}]
    assert decision["backend"] == "sharded:w1:50052,w2:50052" and decision["outcome"] == "ok"


async def test_the_page_is_served_and_needs_the_key_as_query_cookie_or_header(
        aiohttp_client: Any) -> None:
    router = router_of(("static", StaticBackend([node("a")])), **{"gateway.api_keys": ["k"]})
    client = await aiohttp_client(create_app(router))
    for path in ("/dashboard", "/dashboard/events", "/dashboard/state",
                 "/dashboard?key=wrong", "/dashboard/state?key=wrong"):
        assert (await client.get(path)).status == 401, path
    assert (await client.get("/api/tags?key=k")).status == 401  # ?key= is for the dashboard only
    page = await client.get("/dashboard?key=k")
    assert page.status == 200 and page.content_type == "text/html"
    assert "<title>SOLLOL dashboard</title>" in await page.text()
    cookie = page.cookies["sollol_dashboard_key"]
    assert cookie.value == "k" and cookie["httponly"] and cookie["path"] == "/dashboard"
    # the cookie jar now holds the key: the page's EventSource needs nothing else
    events = await client.get("/dashboard/events")
    assert events.status == 200 and (await next_state(events))["nodes"]
    events.close()
    # ...but the cookie opens nothing outside the dashboard
    assert (await client.get("/api/tags", headers={
        "Cookie": "sollol_dashboard_key=k"})).status == 401
    client.session.cookie_jar.clear()
    assert (await client.get("/dashboard/state")).status == 401
    assert (await client.get("/dashboard/state", headers={
        "Authorization": "Bearer k"})).status == 200
    assert (await client.get("/dashboard/events?key=k")).status == 200


async def test_the_stream_ends_when_the_client_leaves(aiohttp_client: Any) -> None:
    app = create_app(router_of(("static", StaticBackend([node("a")]))))
    client = await aiohttp_client(app)
    events = await client.get("/dashboard/events")
    await next_state(events)
    assert app[HUB].streams == 1
    events.close()
    for _ in range(100):  # the server notices at its next write, within a second
        if not app[HUB].streams:
            break
        await asyncio.sleep(0.05)
    assert app[HUB].streams == 0


async def test_shutting_down_ends_open_streams_at_once() -> None:
    runner = web.AppRunner(create_app(router_of(("static", StaticBackend([node("a")])))))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        events = await session.get(f"http://{host}:{port}/dashboard/events")
        await next_state(events)
        started = time.monotonic()
        await asyncio.wait_for(runner.cleanup(), 10)
        # aiohttp would wait 60 s for a handler that does not return
        assert time.monotonic() - started < 3
        async with asyncio.timeout(5):
            assert await events.content.read() is not None  # the stream reached its end
        assert events.content.at_eof()


def test_the_observatory_keeps_the_last_decisions_and_a_rolling_series() -> None:
    now = [1000.0]
    seen = Observatory(keep=3, window_s=5, clock=lambda: now[0])
    target = node("a").endpoint
    for i in range(5):
        request = InferenceRequest.chat(f"m{i}", [])
        decision = Decision.whole(request, target, policy="p", reason=f"reason {i}")
        seen.sollol_on_decision(decision, request)
        now[0] += 1
        seen.sollol_on_request_finished(RequestRecord(
            request_id=request.id, model=request.model, operation=request.operation,
            ok=i != 2, duration_ms=100.0 * (i + 1), decision=decision))
    assert [d["reason"] for d in seen.recent()] == ["reason 4", "reason 3", "reason 2"]
    series = seen.series()
    assert series["start"] == 1001 and series["requests"] == [1, 1, 1, 1, 1]
    assert series["errors"] == [0, 0, 1, 0, 0]
    assert series["latency_ms_mean"] == [100.0, 200.0, 300.0, 400.0, 500.0]
    now[0] += 3
    later = seen.series()
    assert later["requests"] == [1, 1, 0, 0, 0] and later["latency_ms_mean"][2:] == [None] * 3
    assert seen.totals["requests"] == 5 and seen.totals["errors"] == 1


async def test_a_node_going_down_reaches_an_open_stream(aiohttp_client: Any) -> None:
    backend = StaticBackend([node("a"), node("b")])
    app = create_app(router_of(("static", backend)))
    client = await aiohttp_client(app)
    events = await client.get("/dashboard/events")
    assert {n["key"]: n["health"] for n in (await next_state(events))["nodes"]}[B] == "up"
    backend.nodes = [backend.nodes[0], evolve(backend.nodes[1], health=Health.DOWN,
                                              detail="connection refused")]
    await app[ROUTER].fleet.refresh()
    state = await next_state(events)
    b = next(n for n in state["nodes"] if n["key"] == B)
    assert (b["health"], b["detail"]) == ("down", "connection refused")
    events.close()
