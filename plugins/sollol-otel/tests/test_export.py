"""Export over OTLP to real receivers on loopback, configured only by OTEL_* variables; and what
the environment turns on and off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry import context
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sollol_otel import OtelPlugin
from sollol_otel.config import OtelConfig

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.router import Router
from sollol_core.testing import StaticBackend, node
from sollol_core.types import InferenceRequest

from .conftest import isolated

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


class Collector:
    """What an OTLP receiver was sent: spans with their resource's attributes, metric names."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], ProtoSpan]] = []
        self.metrics: set[str] = set()

    def add_traces(self, export: ExportTraceServiceRequest) -> None:
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value
                        for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)

    def named(self, name: str) -> list[ProtoSpan]:
        return [span for _, span in self.spans if span.name == name]


@pytest.fixture
async def http_collector() -> AsyncIterator[tuple[str, Collector]]:
    """An OTLP/HTTP receiver (protobuf bodies) on 127.0.0.1."""
    collector = Collector()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        collector.add_traces(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        export = ExportMetricsServiceRequest.FromString(await request.read())
        collector.metrics.update(m.name for rm in export.resource_metrics
                                 for sm in rm.scope_metrics for m in sm.metrics)
        return web.Response(content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        await runner.cleanup()


async def test_spans_reach_an_otlp_http_receiver_with_their_parent_links(
        aiohttp_client: Any, http_collector: tuple[str, Collector],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, collector = http_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sollol-under-test")
    plugin = OtelPlugin()  # everything from the environment, read when the router starts
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(Settings(), isolated(("static", backend), ("otel", plugin)))
    client = await aiohttp_client(create_app(router))
    assert (await client.post("/api/chat", json=CHAT)).status == 200
    assert plugin.sollol_status()["otel"]["traces"] == "otlp (http/protobuf)"
    await client.close()  # the router stops: the plugin flushes and shuts its providers down

    (server,) = collector.named("POST /api/chat")
    (route,) = collector.named("sollol.route")
    (upstream,) = collector.named("chat m")
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER and server.parent_span_id == b""
    assert route.kind == ProtoSpan.SPAN_KIND_INTERNAL and route.parent_span_id == server.span_id
    assert upstream.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert upstream.parent_span_id == route.span_id
    assert server.trace_id == route.trace_id == upstream.trace_id
    assert {resource["service.name"] for resource, _ in collector.spans} == {
        "sollol-under-test"}
    ((_, sent),) = backend.executed
    assert sent.upstream_headers["traceparent"].split("-")[1:3] == [
        upstream.trace_id.hex(), upstream.span_id.hex()]
    # The endpoint alone turns metrics on too; the last ones are sent at shutdown.
    assert {"gen_ai.client.operation.duration", "sollol.request.duration",
            "http.server.request.duration"} <= collector.metrics


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(self, request: ExportTraceServiceRequest,
               context: Any) -> ExportTraceServiceResponse:
        self.collector.add_traces(request)
        return ExportTraceServiceResponse()


@pytest.fixture
def grpc_collector() -> Iterator[tuple[str, Collector]]:
    """An OTLP/gRPC trace receiver on 127.0.0.1."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(collector), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", collector
    finally:
        server.stop(grace=None)


async def test_spans_reach_an_otlp_grpc_receiver_from_the_python_api(
        grpc_collector: tuple[str, Collector], monkeypatch: pytest.MonkeyPatch) -> None:
    url, collector = grpc_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    plugin = OtelPlugin()
    router = Router.create(Settings(), isolated(("static", StaticBackend([node("a",
                                                                                models=["m"])])),
                                                ("otel", plugin)))
    await router.start()
    try:
        await router.run(InferenceRequest.generate("m", "hi"))
        assert plugin.sollol_status()["otel"] == {
            "active": True, "traces": "otlp (grpc)", "metrics": "off", "disabled": False,
            "open_requests": 0}
    finally:
        await router.stop()

    (request,) = collector.named("sollol.request")
    (route,) = collector.named("sollol.route")
    (upstream,) = collector.named("text_completion m")
    assert request.parent_span_id == b""
    assert route.parent_span_id == request.span_id
    assert upstream.parent_span_id == route.span_id
    assert {resource["service.name"] for resource, _ in collector.spans} == {"sollol"}


class Headers:
    """A backend that keeps the headers each attempt was sent with."""

    def __init__(self) -> None:
        self.backend = StaticBackend([node("a", models=["m"])])

    def sent(self) -> dict[str, str]:
        ((_, request),) = self.backend.executed
        return dict(request.upstream_headers)


async def _run_once(plugin: OtelPlugin, **headers: str) -> dict[str, str]:
    seen = Headers()
    router = Router.create(Settings(), isolated(("static", seen.backend), ("otel", plugin)))
    await router.start()
    try:
        if headers:  # a caller's trace, as the gateway would have extracted it
            token = context.attach(TraceContextTextMapPropagator().extract(headers))
            try:
                await router.run(InferenceRequest.chat("m", []))
            finally:
                context.detach(token)
        else:
            await router.run(InferenceRequest.chat("m", []))
    finally:
        await router.stop()
    return seen.sent()


async def test_without_configuration_nothing_is_exported_but_traces_still_propagate() -> None:
    plugin = OtelPlugin()
    sent = await _run_once(plugin)
    assert plugin.sollol_status()["otel"]["traces"] == "off"
    _, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert int(trace_id, 16) and int(span_id, 16)
    assert not int(flags, 16) & 1  # a trace of our own that nobody records: not sampled
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    continued = (await _run_once(OtelPlugin(), traceparent=caller))["traceparent"]
    assert continued.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert continued.split("-")[2] != "00f067aa0ba902b7" and continued.endswith("-01")


async def test_without_configuration_the_gateway_continues_a_callers_trace_without_spans(
        aiohttp_client: Any) -> None:
    plugin, seen = OtelPlugin(), Headers()
    router = Router.create(Settings(), isolated(("static", seen.backend), ("otel", plugin)))
    client = await aiohttp_client(create_app(router))
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.post("/api/chat", json={"model": "m", "messages": []},
                                 headers={"traceparent": caller, "tracestate": "team=1"})
    assert response.status == 200
    sent = seen.sent()
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id not in {"00f067aa0ba902b7", "0" * 16}
    assert sent["tracestate"] == "team=1"
    assert plugin.sollol_status()["otel"]["active"] is False  # no span was made


async def test_otel_sdk_disabled_turns_the_plugin_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    plugin = OtelPlugin()
    assert await _run_once(plugin) == {}
    assert plugin.sollol_status()["otel"]["disabled"] is True
    assert plugin.active is False


async def test_the_plugin_stops_with_the_last_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    plugin = OtelPlugin()
    first, second = (Router.create(Settings(), isolated(("otel", plugin))) for _ in range(2))
    await first.start()
    await second.start()
    await first.stop()
    assert plugin.active
    await second.stop()
    assert not plugin.active
    await asyncio.sleep(0)


@pytest.mark.parametrize(("environ", "traces", "metrics"), [
    ({}, "off", "off"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "otlp (http/protobuf)",
     "otlp (http/protobuf)"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"},
     "otlp (grpc)", "otlp (http/protobuf)"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
     "otlp (http/protobuf)", "off"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console", "off"),
    ({"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_METRICS_EXPORTER": "none",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "otlp (http/protobuf), console", "off"),
    ({"OTEL_TRACES_EXPORTER": "zipkin,otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "otlp (http/protobuf)", "off"),
])
def test_which_exporters_the_environment_turns_on(environ: dict[str, str], traces: str,
                                                   metrics: str) -> None:
    config = OtelConfig.from_environ(environ)
    assert (config.traces.describe(), config.metrics.describe()) == (traces, metrics)
