"""The span tree and metrics of requests, through the real gateway and the Python API's router,
with in-memory exporters."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from sollol_otel import OtelPlugin

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.router import Router
from sollol_core.testing import StaticBackend, node
from sollol_core.types import (
    AttemptRecord,
    Decision,
    Endpoint,
    InferenceRequest,
    Operation,
    RequestRecord,
    ShardPlan,
)

from .conftest import Telemetry, isolated

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_gateway_request_is_a_server_span_over_a_route_span_over_a_client_span(
        aiohttp_client: Any, telemetry: Telemetry) -> None:
    backend = StaticBackend([node("a", models=["m"]), node("b", models=["other"])])
    router = Router.create(Settings(), isolated(("static", backend), ("otel", telemetry.plugin)))
    client = await aiohttp_client(create_app(router))

    response = await client.post("/api/chat", json=CHAT, headers={"User-Agent": "pytest"})
    assert response.status == 200

    (server,) = telemetry.of_kind(SpanKind.SERVER)
    (route,) = telemetry.named("sollol.route")
    (upstream,) = telemetry.of_kind(SpanKind.CLIENT)
    assert server.name == "POST /api/chat"
    assert server.parent is None
    assert dict(server.attributes or {}) | {"client.address": None} == {
        "http.request.method": "POST", "url.path": "/api/chat", "url.scheme": "http",
        "http.route": "/api/chat", "http.response.status_code": 200,
        "server.address": "127.0.0.1", "server.port": client.port,
        "network.protocol.version": "1.1", "user_agent.original": "pytest",
        "client.address": None, "sollol.request.id": response.headers["X-Sollol-Request-Id"],
        "sollol.attempts": 1, "sollol.queue.wait_ms": 0.0,
        "sollol.backend": "static://a:11434",
        "sollol.time_to_first_chunk_ms": server.attributes["sollol.time_to_first_chunk_ms"],
    }
    assert server.status.status_code is StatusCode.UNSET

    assert parent_id(route) == server.context.span_id
    assert route.context.trace_id == server.context.trace_id
    assert route.kind is SpanKind.INTERNAL
    route_attributes = dict(route.attributes or {})
    assert route_attributes["sollol.policy"] == "default"
    assert route_attributes["sollol.backend"] == "static://a:11434"
    assert route_attributes["sollol.attempt"] == 1
    assert route_attributes["sollol.placed"] is True
    assert route_attributes["sollol.reason"] == response.headers["X-Sollol-Reason"]
    assert route_attributes["sollol.candidates"] == ("static://a:11434",)
    assert len(route_attributes["sollol.candidate.scores"]) == 1
    assert route_attributes["sollol.queue.wait_ms"] == 0.0
    assert route_attributes["gen_ai.request.model"] == "m"

    assert upstream.name == "chat m"
    assert parent_id(upstream) == route.context.span_id
    upstream_attributes = dict(upstream.attributes or {})
    assert {k: upstream_attributes[k] for k in (
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
        "server.address", "server.port", "sollol.attempt")} == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "static",
        "gen_ai.request.model": "m", "server.address": "a", "server.port": 11434,
        "sollol.attempt": 1}
    assert upstream_attributes["sollol.time_to_first_chunk_ms"] >= 0
    assert upstream.status.status_code is StatusCode.UNSET
    # The backend was sent the client span as the parent of its own work.
    ((_, sent),) = backend.executed
    assert sent.upstream_headers["traceparent"] == traceparent_of(upstream)


async def test_gateway_metrics_duration_in_flight_and_queue_depth(
        aiohttp_client: Any, telemetry: Telemetry) -> None:
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(Settings(), isolated(("static", backend), ("otel", telemetry.plugin)))
    client = await aiohttp_client(create_app(router))
    for _ in range(2):
        assert (await client.post("/api/generate", json={"model": "m", "prompt": "x",
                                                         "stream": True})).status == 200

    (operation,) = telemetry.points("gen_ai.client.operation.duration")
    assert operation.count == 2
    assert dict(operation.attributes) == {
        "gen_ai.operation.name": "text_completion", "gen_ai.provider.name": "static",
        "gen_ai.request.model": "m", "server.address": "a", "server.port": 11434}
    (first_chunk,) = telemetry.points("gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.count == 2
    (request_duration,) = telemetry.points("sollol.request.duration")
    assert request_duration.count == 2 and "error.type" not in request_duration.attributes
    (http,) = telemetry.points("http.server.request.duration")
    assert http.count == 2 and dict(http.attributes) == {
        "http.request.method": "POST", "url.scheme": "http", "http.route": "/api/generate",
        "http.response.status_code": 200, "network.protocol.version": "1.1"}
    assert telemetry.sums("sollol.backend.in_flight") == {
        frozenset({("sollol.backend", "static://a:11434"),
                   ("gen_ai.provider.name", "static")}): 0}
    (depth,) = telemetry.points("sollol.queue.depth")
    assert depth.value == 0


async def test_an_incoming_traceparent_is_continued_to_the_backend(
        aiohttp_client: Any, telemetry: Telemetry) -> None:
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(Settings(), isolated(("static", backend), ("otel", telemetry.plugin)))
    client = await aiohttp_client(create_app(router))
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    response = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    assert response.status == 200

    (server,) = telemetry.of_kind(SpanKind.SERVER)
    assert server.name == "POST /v1/chat/completions"
    assert f"{server.context.trace_id:032x}" == caller_trace
    assert server.parent is not None and server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == caller_span
    assert {f"{s.context.trace_id:032x}" for s in telemetry.spans()} == {caller_trace}
    (upstream,) = telemetry.of_kind(SpanKind.CLIENT)
    ((_, sent),) = backend.executed
    assert sent.upstream_headers["traceparent"] == f"00-{caller_trace}-" \
        f"{upstream.context.span_id:016x}-01"


async def test_an_unknown_path_is_a_server_span_without_a_route(
        aiohttp_client: Any, telemetry: Telemetry) -> None:
    router = Router.create(Settings(), isolated(("otel", telemetry.plugin)))
    client = await aiohttp_client(create_app(router))
    assert (await client.get("/nowhere")).status == 404
    (server,) = telemetry.spans()
    assert server.name == "GET"
    assert server.attributes is not None and "http.route" not in server.attributes
    assert server.attributes["http.response.status_code"] == 404
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's error


async def test_fail_over_gives_two_route_spans_and_two_client_spans_in_one_trace(
        telemetry: Telemetry) -> None:
    backend = StaticBackend([node("a", models=["m"], latency_ms=1.0),
                             node("b", models=["m"], latency_ms=900.0)], fail={"a": 1})
    router = Router.create(Settings(), isolated(("static", backend), ("otel", telemetry.plugin)))
    await router.fleet.refresh()
    _, routing = await router.run(InferenceRequest.chat("m", [], stream=True))
    assert routing.attempts == 2

    (request,) = telemetry.named("sollol.request")  # no gateway: the request's own root span
    assert request.parent is None and request.kind is SpanKind.INTERNAL
    assert request.attributes is not None and request.attributes["sollol.attempts"] == 2
    assert request.status.status_code is StatusCode.UNSET
    routes = sorted(telemetry.named("sollol.route"),
                    key=lambda s: (s.attributes or {})["sollol.attempt"])
    assert [(s.attributes or {})["sollol.backend"] for s in routes] == [
        "static://a:11434", "static://b:11434"]
    assert [parent_id(s) for s in routes] == [request.context.span_id] * 2
    # The second decision no longer sees the node that failed.
    assert (routes[1].attributes or {})["sollol.candidates"] == ("static://b:11434",)
    failed, ran = sorted(telemetry.of_kind(SpanKind.CLIENT),
                         key=lambda s: (s.attributes or {})["sollol.attempt"])
    assert [parent_id(failed), parent_id(ran)] == [r.context.span_id for r in routes]
    assert failed.attributes is not None and failed.attributes["error.type"] == "BackendError"
    assert failed.status.status_code is StatusCode.ERROR
    assert "a refused" in (failed.status.description or "")
    assert ran.attributes is not None and "error.type" not in ran.attributes
    assert ran.status.status_code is StatusCode.UNSET
    assert {s.context.trace_id for s in telemetry.spans()} == {request.context.trace_id}
    # The backend that answered was sent the second attempt's span.
    ((_, sent),) = backend.executed
    assert sent.upstream_headers["traceparent"] == traceparent_of(ran)

    durations = {(p.attributes["server.address"], p.attributes.get("error.type")): p.count
                 for p in telemetry.points("gen_ai.client.operation.duration")}
    assert durations == {("a", "BackendError"): 1, ("b", None): 1}
    assert set(telemetry.sums("sollol.backend.in_flight").values()) == {0}


async def test_a_request_no_node_can_run_is_an_error_with_a_refused_route(
        telemetry: Telemetry) -> None:
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(Settings(), isolated(("static", backend), ("otel", telemetry.plugin)))
    await router.fleet.refresh()
    try:
        await router.run(InferenceRequest.chat("ghost", []))
    except Exception as exc:
        assert "ghost" in str(exc)
    else:
        raise AssertionError("a model no node holds was placed")
    (route,) = telemetry.named("sollol.route")
    assert route.attributes is not None and route.attributes["sollol.placed"] is False
    assert route.attributes["error.type"] == "no_route"
    assert route.status.status_code is StatusCode.ERROR
    (request,) = telemetry.named("sollol.request")
    assert request.attributes is not None and request.attributes["error.type"] == "no_route"
    assert telemetry.of_kind(SpanKind.CLIENT) == []
    (duration,) = telemetry.points("sollol.request.duration")
    assert duration.attributes["error.type"] == "no_route"


def test_a_sharded_decision_names_its_plan_and_llama_cpp_but_no_server_address(
        telemetry: Telemetry) -> None:
    plugin = telemetry.plugin
    request = InferenceRequest.generate("big", "hi")
    workers = (Endpoint("llamacpp-rpc", "10.0.0.1", 50052), Endpoint("llamacpp-rpc",
                                                                      "10.0.0.2", 50052))
    decision = Decision.sharded(request, ShardPlan(workers, (0.75, 0.25), (24, 8)),
                                policy="shard", reason="too big for one node")
    plugin.sollol_on_decision(decision, request)
    headers = plugin.sollol_on_attempt(request, decision, 1)
    assert headers is not None and headers["traceparent"].startswith("00-")

    (client_open,) = telemetry.sums("sollol.backend.in_flight").values()
    assert client_open == 1  # counted while it runs
    plugin.sollol_on_attempt_finished(AttemptRecord(
        request_id=request.id, model="big", operation=request.operation, attempt=1,
        decision=decision, ok=True, duration_ms=20.0, first_chunk_ms=5.0, input_tokens=3,
        output_tokens=7))
    (upstream,) = telemetry.of_kind(SpanKind.CLIENT)
    attributes = dict(upstream.attributes or {})
    assert upstream.name == "text_completion big"
    assert attributes["gen_ai.provider.name"] == "llama.cpp"
    assert "server.address" not in attributes and "server.port" not in attributes
    assert attributes["gen_ai.usage.input_tokens"] == 3
    assert attributes["gen_ai.usage.output_tokens"] == 7
    assert attributes["sollol.time_to_first_chunk_ms"] == 5.0
    tokens = {p.attributes["gen_ai.token.type"]: p.sum
              for p in telemetry.points("gen_ai.client.token.usage")}
    assert tokens == {"input": 3, "output": 7}
    assert set(telemetry.sums("sollol.backend.in_flight").values()) == {0}

    plugin.sollol_on_request_finished(RequestRecord(
        request_id=request.id, model="big", operation=Operation.GENERATE, ok=True,
        duration_ms=25.0, decision=decision, queue_ms=1.5))
    (route,) = telemetry.named("sollol.route")
    route_attributes = dict(route.attributes or {})
    assert route_attributes["sollol.shard.workers"] == (
        "llamacpp-rpc://10.0.0.1:50052", "llamacpp-rpc://10.0.0.2:50052")
    assert route_attributes["sollol.shard.tensor_split"] == (0.75, 0.25)
    assert route_attributes["sollol.shard.layers"] == (24, 8)
    assert route_attributes["sollol.backend.kind"] == "sharded"
    assert route_attributes["sollol.queue.wait_ms"] == 1.5


def test_attempts_that_never_finish_do_not_keep_spans_forever(telemetry: Telemetry) -> None:
    plugin = OtelPlugin(tracer_provider=_provider_of(telemetry), max_open_requests=2)
    target = Endpoint("ollama", "h", 11434)
    requests = [InferenceRequest.chat("m", []) for _ in range(3)]
    for request in requests:
        decision = Decision.whole(request, target, policy="p", reason="r")
        plugin.sollol_on_decision(decision, request)
        plugin.sollol_on_attempt(request, decision, 1)
    assert plugin.sollol_status() == {"otel": {"active": True, "open_requests": 2}}
    # The oldest request's spans were ended, marked abandoned; the others are still open.
    ended = telemetry.spans()
    assert {(s.attributes or {})["sollol.request.id"] for s in ended} == {requests[0].id}
    assert sorted(s.name for s in ended) == ["chat m", "sollol.request", "sollol.route"]
    assert all((s.attributes or {})["sollol.otel.abandoned"] for s in ended)
    (upstream,) = [s for s in ended if s.kind is SpanKind.CLIENT]
    assert upstream.status.status_code is StatusCode.ERROR
    assert (upstream.attributes or {})["error.type"] == "abandoned"


def _provider_of(telemetry: Telemetry) -> TracerProvider:
    """A tracer provider exporting to ``telemetry``'s span exporter."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(telemetry.exporter))
    return provider


async def test_excluded_urls_are_not_traced(aiohttp_client: Any, telemetry: Telemetry) -> None:
    plugin = OtelPlugin(tracer_provider=_provider_of(telemetry), excluded_urls=("/health$",))
    router = Router.create(Settings(), isolated(("static", StaticBackend([node("a")])),
                                                ("otel", plugin)))
    client = await aiohttp_client(create_app(router))
    assert (await client.get("/health")).status == 200
    assert telemetry.spans() == []
    assert (await client.get("/api/version")).status == 200
    assert [s.name for s in telemetry.spans()] == ["GET /api/version"]
