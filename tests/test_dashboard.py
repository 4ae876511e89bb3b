"""The dashboard: its page, its server-sent state, what it remembers, and its API-key rules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from attrs import evolve

from sollol_core.config import PluginSettings, Settings
from sollol_core.gateway.app import create_app
from sollol_core.gateway.common import ROUTER
from sollol_core.gateway.dashboard import COOKIE, HUB, SESSIONS
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.observatory import Observatory
from sollol_core.panels import Panel, PanelGroup
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
    def sollol_place(self, request: InferenceRequest,
                     fleet: FleetSnapshot) -> Decision | None:
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
    def sollol_dashboard_panels(self) -> Panel:
        return Panel("shards", "Coordinators and layers", ("RPC worker", "layers"), (
            PanelGroup("big", (("w1:50052", "layers 0–9 (10)"), ("w2:50052", "layers 10–27 (18)")),
                       status="ok", detail="http://127.0.0.1:9001"),))


class Failing:
    @hookimpl
    def sollol_dashboard_panels(self) -> Panel:
        raise RuntimeError("panel bug")


async def test_plugins_panels_and_sharded_decisions_are_shown(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(router_of(
        ("static", StaticBackend([node("a", models=["m"])])), ("shards", Sharding()),
        ("failing", Failing()))))
    assert (await client.post("/api/chat", json=chat("big"))).status == 200
    state = await (await client.get("/dashboard/state")).json()
    (panel,) = state["panels"]  # the failing plugin's panel is left out, the page still works
    assert panel["key"] == "shards" and panel["columns"] == ["RPC worker", "layers"]
    (group,) = panel["groups"]
    assert group["title"] == "big" and group["status"] == "ok"
    assert group["rows"][1] == ["w2:50052", "layers 10–27 (18)"]
    (decision,) = state["decisions"]
    assert decision["shards"] == [{"worker": "w1:50052", "layers": 10},
                                  {"worker": "w2:50052", "layers": 18}]
    assert decision["backend"] == "sharded:w1:50052,w2:50052" and decision["outcome"] == "ok"


KEY = "sk-dashboard-0123456789abcdef"


def keyed_app(**flags: Any) -> web.Application:
    return create_app(router_of(("static", StaticBackend([node("a")])),
                                **{"gateway.api_keys": [KEY, "other-key"], **flags}))


async def test_the_page_is_served_and_needs_the_key_as_query_cookie_or_header(
        aiohttp_client: Any) -> None:
    client = await aiohttp_client(keyed_app())
    for path in ("/dashboard", "/dashboard/events", "/dashboard/state",
                 "/dashboard?key=wrong", "/dashboard/state?key=wrong"):
        assert (await client.get(path)).status == 401, path
    assert (await client.get(f"/api/tags?key={KEY}")).status == 401  # ?key= is for the dashboard
    page = await client.get(f"/dashboard?key={KEY}")
    assert page.status == 200 and page.content_type == "text/html"
    assert "<title>SOLLOL dashboard</title>" in await page.text()
    assert "sollol_dashboard_key" not in page.cookies
    cookie = page.cookies[COOKIE]
    assert cookie["httponly"] and cookie["path"] == "/dashboard"
    assert cookie["samesite"] == "Strict" and cookie["max-age"] == str(12 * 3600)
    # the cookie jar now holds a session: the page's EventSource needs nothing else
    events = await client.get("/dashboard/events")
    assert events.status == 200 and (await next_state(events))["nodes"]
    events.close()
    client.session.cookie_jar.clear()
    assert (await client.get("/dashboard/state")).status == 401
    assert (await client.get("/dashboard/state", headers={
        "Authorization": f"Bearer {KEY}"})).status == 200
    assert (await client.get(f"/dashboard/events?key={KEY}")).status == 200


async def session_of(client: Any, **headers: str) -> Any:
    """The session cookie ``/dashboard?key=`` sets, the client's cookie jar left empty."""
    page = await client.get(f"/dashboard?key={KEY}", headers=headers)
    assert page.status == 200
    client.session.cookie_jar.clear()
    return page.cookies[COOKIE]


async def test_the_cookie_holds_a_session_not_the_key(aiohttp_client: Any) -> None:
    client = await aiohttp_client(keyed_app())
    first, second = (await session_of(client)).value, (await session_of(client)).value
    for value in (first, second):
        assert KEY not in value and "other-key" not in value
        assert value not in KEY and value not in "other-key"
    assert first != second  # each page load gets its own session
    # a cookie that holds a key, as earlier versions set, is no session
    for name in (COOKIE, "sollol_dashboard_key"):
        assert (await client.get("/dashboard/state", headers={
            "Cookie": f"{name}={KEY}"})).status == 401


async def test_a_session_opens_the_dashboard_and_nothing_else(aiohttp_client: Any) -> None:
    client = await aiohttp_client(keyed_app())
    session = {"Cookie": f"{COOKIE}={(await session_of(client)).value}"}
    assert (await client.get("/dashboard/state", headers=session)).status == 200
    page = await client.get("/dashboard", headers=session)
    assert page.status == 200 and COOKIE not in page.cookies  # no key, no new session
    events = await client.get("/dashboard/events", headers=session)
    assert events.status == 200 and (await next_state(events))["nodes"]
    events.close()
    for path in ("/api/tags", "/api/sollol/status", "/v1/models", "/metrics"):
        assert (await client.get(path, headers=session)).status == 401, path


async def test_a_tampered_foreign_or_expired_session_is_refused(aiohttp_client: Any) -> None:
    app = keyed_app()
    client = await aiohttp_client(app)
    elsewhere = await aiohttp_client(keyed_app())  # same keys, its own secret
    value = (await session_of(client)).value
    expiry, nonce, signature = value.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for forged in (f"{int(expiry) + 3600}.{nonce}.{signature}",
                   f"{expiry}.{nonce[::-1]}.{signature}", f"{expiry}.{nonce}.{flipped}",
                   f"{expiry}.{nonce}.", f"{expiry}.{nonce}", "", "..",
                   (await session_of(elsewhere)).value):
        assert (await client.get("/dashboard/state", headers={
            "Cookie": f"{COOKIE}={forged}"})).status == 401, forged
    session = {"Cookie": f"{COOKIE}={value}"}
    assert (await client.get("/dashboard/state", headers=session)).status == 200

    app[SESSIONS].clock = lambda: time.time() + 12 * 3600 - 60
    assert (await client.get("/dashboard/state", headers=session)).status == 200
    app[SESSIONS].clock = lambda: time.time() + 12 * 3600 + 1
    assert (await client.get("/dashboard/state", headers=session)).status == 401


async def test_a_short_session_setting_ends_sessions_sooner(aiohttp_client: Any) -> None:
    app = keyed_app(**{"gateway.dashboard_session_s": 60})
    client = await aiohttp_client(app)
    cookie = await session_of(client)
    assert cookie["max-age"] == "60"
    app[SESSIONS].clock = lambda: time.time() + 61
    assert (await client.get("/dashboard/state", headers={
        "Cookie": f"{COOKIE}={cookie.value}"})).status == 401


async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy_only(aiohttp_client: Any) -> None:
    https = {"X-Forwarded-Proto": "https"}
    trusting = await aiohttp_client(keyed_app())  # the test client connects from 127.0.0.1
    assert not (await session_of(trusting))["secure"]
    assert (await session_of(trusting, **https))["secure"]
    assert not (await session_of(trusting, **{"X-Forwarded-Proto": "http"}))["secure"]
    distrusting = await aiohttp_client(keyed_app(**{"gateway.trusted_proxies": []}))
    assert not (await session_of(distrusting, **https))["secure"]
    elsewhere = await aiohttp_client(keyed_app(**{"gateway.trusted_proxies": ["10.0.0.0/8"]}))
    assert not (await session_of(elsewhere, **https))["secure"]


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        name, *sources = directive.split()
        parsed[name] = sources
    return parsed


async def test_dashboard_responses_carry_security_headers(aiohttp_client: Any) -> None:
    client = await aiohttp_client(keyed_app())
    page = await client.get(f"/dashboard?key={KEY}")
    policy = directives(page.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    for name in ("frame-ancestors", "base-uri", "form-action"):
        assert policy[name] == ["'none'"], name
    for name in ("script-src", "style-src"):  # the page's own inline blocks, nothing else
        assert policy[name] and all(s.startswith("'sha256-") for s in policy[name]), policy
    assert "img-src" not in policy
    state = await client.get("/dashboard/state")
    events = await client.get("/dashboard/events")
    for response in (page, state, events):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    events.close()


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
