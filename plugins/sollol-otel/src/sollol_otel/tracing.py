"""The plugin: spans and metrics from SOLLOL's hooks.

Span tree of one request::

    SERVER  "POST /api/chat"          (gateway middleware; continues an incoming traceparent)
      INTERNAL "sollol.route"         (one per decision, i.e. per attempt)
        CLIENT "chat llama3.2"        (one per attempt; its context is the traceparent sent
                                       upstream)

Without a gateway (the Python API) an INTERNAL ``sollol.request`` span takes the SERVER span's
place, so that the attempts of a request that failed over stay in one trace; it is a root span,
or a child of the caller's current span.

Open spans live in a table keyed by request id (client spans by request id and attempt). The
table is bounded: when it is full, the oldest request's spans are ended as abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from attrs import define, field
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sollol_core.config import Settings
from sollol_core.gateway.common import ROUTER
from sollol_core.hookspecs import hookimpl
from sollol_core.plugins import core_version
from sollol_core.router import Router
from sollol_core.types import AttemptRecord, Decision, InferenceRequest, RequestRecord
from sollol_otel import attributes as attrs
from sollol_otel import config, names, propagation
from sollol_otel.instruments import Instruments

log = logging.getLogger(__name__)

#: The gateway's SERVER span, for the hooks called while the gateway serves a request.
_SERVER_SPAN: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "sollol_otel_server_span", default=None)

#: Requests whose spans may be open at once; past that, the oldest are ended as abandoned.
DEFAULT_MAX_OPEN_REQUESTS = 10_000

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@define
class _Attempt:
    span: Span
    in_flight: attrs.Attributes


@define
class _Request:
    """The open spans of one request."""

    #: The parent of the route spans: the SERVER span or the ``sollol.request`` span.
    parent: Context
    server_span: Span | None = None
    request_span: Span | None = None
    decisions: int = 0
    route: Span | None = None
    attempts: dict[int, _Attempt] = field(factory=dict)
    last_error_type: str | None = None


@define
class _Active:
    """A tracer and instruments in use; the table of open spans."""

    tracer: trace.Tracer
    instruments: Instruments
    excluded: re.Pattern[str] | None
    max_open: int
    open: OrderedDict[str, _Request] = field(factory=OrderedDict)


class OtelPlugin:
    """SOLLOL's OpenTelemetry instrumentation, as a plugin object.

    Given providers (tests, or an application that owns its own), it uses them at once and never
    shuts them down. Without, it builds its own from the OTEL_* environment when a router starts
    (:func:`sollol_lifespan`) and flushes and shuts them down when the last router stops.
    """

    def __init__(self, *, tracer_provider: TracerProvider | None = None,
                 meter_provider: MeterProvider | None = None,
                 max_open_requests: int = DEFAULT_MAX_OPEN_REQUESTS,
                 excluded_urls: tuple[str, ...] = ()) -> None:
        self._max_open = max_open_requests
        # Routers compare by value (attrs), so not a WeakSet: weak references by identity.
        self._routers: dict[int, weakref.ref[Router]] = {}
        self._propagator = CompositePropagator([TraceContextTextMapPropagator(),
                                                W3CBaggagePropagator()])
        self._injected = tracer_provider is not None or meter_provider is not None
        self._users = 0
        self._owned: tuple[TracerProvider, MeterProvider] | None = None
        self._config: config.OtelConfig | None = None
        self._active: _Active | None = None
        #: No exporter configured: no spans, only a traceparent for each upstream attempt.
        self._propagate_only = False
        if self._injected:
            self._activate(tracer_provider or TracerProvider(shutdown_on_exit=False),
                           meter_provider or MeterProvider(shutdown_on_exit=False), excluded_urls)

    # -- set-up ----------------------------------------------------------------------------------

    def _activate(self, tracer_provider: TracerProvider, meter_provider: MeterProvider,
                  excluded_urls: tuple[str, ...]) -> None:
        version = core_version()
        self._active = _Active(
            tracer=tracer_provider.get_tracer(names.SCOPE, version),
            instruments=Instruments.create(meter_provider.get_meter(names.SCOPE, version),
                                           self._routers),
            excluded=re.compile("|".join(excluded_urls)) if excluded_urls else None,
            max_open=self._max_open)

    @property
    def active(self) -> bool:
        """Whether spans and metrics are being made (a router runs, the SDK is not disabled)."""
        return self._active is not None

    def watch(self, router: Router) -> None:
        """Report ``router``'s admission queue in ``sollol.queue.depth`` (the gateway does this
        itself; call it for a Python API pool: ``plugin.watch(pool.router)``)."""
        key = id(router)
        self._routers[key] = weakref.ref(router, lambda _: self._routers.pop(key, None))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Providers from the environment while at least one router runs."""
        if self._injected:
            yield
            return
        if self._users == 0:
            self._start_from_environment()
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                await self._stop()

    def _start_from_environment(self) -> None:
        settings = config.OtelConfig.from_environ()
        self._config = settings
        if settings.disabled:
            log.info("sollol-otel: OTEL_SDK_DISABLED=true, no traces or metrics")
            return
        if not settings.traces.exporters and not settings.metrics.exporters:
            self._propagate_only = True
            log.info("sollol-otel: traces off, metrics off (no OTEL_* exporter): "
                     "propagating traceparent only")
            return
        service = config.resource(settings)
        tracer_provider = config.tracer_provider(settings, service)
        meter_provider = config.meter_provider(settings, service)
        self._owned = (tracer_provider, meter_provider)
        self._activate(tracer_provider, meter_provider, settings.excluded_urls)
        log.info("sollol-otel: traces %s, metrics %s", settings.traces.describe(),
                 settings.metrics.describe())

    async def _stop(self) -> None:
        self._propagate_only = False
        active, self._active = self._active, None
        owned, self._owned = self._owned, None
        if active is not None:
            for state in list(active.open.values()):
                self._abandon(active, state)
            active.open.clear()
        if owned is not None:
            # Flushing sends over the network: not on the event loop (a collector on this very
            # loop could not answer).
            tracer_provider, meter_provider = owned
            await asyncio.to_thread(tracer_provider.shutdown)
            await asyncio.to_thread(meter_provider.shutdown)

    # -- hooks -------------------------------------------------------------------------------------

    @hookimpl
    def sollol_lifespan(self, settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
        return self.running()

    @hookimpl
    def sollol_status(self) -> Mapping[str, Any] | None:
        settings = self._config
        section: dict[str, Any] = {"active": self.active}
        if settings is not None:
            section.update(traces=settings.traces.describe(), metrics=settings.metrics.describe(),
                           disabled=settings.disabled)
        if self._active is not None:
            section["open_requests"] = len(self._active.open)
        return {"otel": section}

    @hookimpl
    def sollol_gateway_app(self, app: web.Application) -> None:
        self.watch(app[ROUTER])

        @web.middleware
        async def trace_request(request: web.Request, handler: _Handler) -> web.StreamResponse:
            active = self._active
            if active is None:
                if not self._propagate_only:
                    return await handler(request)
                token = propagation.INCOMING.set(
                    propagation.Incoming.from_headers(request.headers))
                try:
                    return await handler(request)
                finally:
                    propagation.INCOMING.reset(token)
            if active.excluded is not None and active.excluded.search(str(request.url)):
                return await handler(request)
            return await self._serve(active, request, handler)

        app.middlewares.append(trace_request)

    @hookimpl
    def sollol_on_decision(self, decision: Decision, request: InferenceRequest) -> None:
        active = self._active
        if active is None:
            return
        state = active.open.get(request.id)
        if state is None:
            state = self._open_request(active, request)
        elif state.route is not None:
            state.route.end()  # the previous attempt's decision: superseded
        state.decisions += 1
        route = active.tracer.start_span(
            names.SPAN_ROUTE, context=state.parent, kind=SpanKind.INTERNAL,
            start_time=_ns(decision.decided_at),
            attributes=attrs.route_attributes(decision, request, state.decisions))
        if not decision.placed:
            route.set_attribute(names.ERROR_TYPE, names.ERROR_NO_ROUTE)
            route.set_status(Status(StatusCode.ERROR, decision.reason))
        state.route = route

    @hookimpl
    def sollol_on_attempt(self, request: InferenceRequest, decision: Decision,
                          attempt: int) -> Mapping[str, str] | None:
        active = self._active
        if active is None:
            return propagation.upstream_headers() if self._propagate_only else None
        state = active.open.get(request.id) or self._open_request(active, request)
        parent = (trace.set_span_in_context(state.route) if state.route is not None
                  else state.parent)
        span = active.tracer.start_span(
            attrs.client_span_name(request), context=parent, kind=SpanKind.CLIENT,
            attributes=attrs.client_attributes(decision, request, attempt))
        in_flight = attrs.in_flight_attributes(decision)
        previous = state.attempts.pop(attempt, None)
        if previous is not None:  # the same attempt twice: end the first, keep counts right
            self._end_attempt(active, previous, names.ERROR_ABANDONED)
        state.attempts[attempt] = _Attempt(span, in_flight)
        active.instruments.in_flight.add(1, in_flight)
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=trace.set_span_in_context(span))
        return headers

    @hookimpl
    def sollol_on_attempt_finished(self, record: AttemptRecord) -> None:
        active = self._active
        if active is None:
            return
        state = active.open.get(record.request_id)
        running = state.attempts.pop(record.attempt, None) if state is not None else None
        metric = attrs.client_metric_attributes(record.decision, record.model, record.operation)
        span = running.span if running is not None else None
        if record.input_tokens is not None:
            if span is not None:
                span.set_attribute(names.GEN_AI_USAGE_INPUT_TOKENS, record.input_tokens)
            active.instruments.token_usage.record(
                record.input_tokens, {**metric, names.GEN_AI_TOKEN_TYPE: names.TOKEN_INPUT})
        if record.output_tokens is not None:
            if span is not None:
                span.set_attribute(names.GEN_AI_USAGE_OUTPUT_TOKENS, record.output_tokens)
            active.instruments.token_usage.record(
                record.output_tokens, {**metric, names.GEN_AI_TOKEN_TYPE: names.TOKEN_OUTPUT})
        if record.first_chunk_ms is not None:
            if span is not None:
                span.set_attribute(names.TIME_TO_FIRST_CHUNK_MS, record.first_chunk_ms)
            active.instruments.time_to_first_chunk.record(record.first_chunk_ms / 1000, metric)
        if not record.ok:
            error_type = record.error_type or names.ERROR_TYPE_OTHER
            metric[names.ERROR_TYPE] = error_type
            if state is not None:
                state.last_error_type = error_type
            if span is not None:
                span.set_attribute(names.ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, record.error or error_type))
        active.instruments.operation_duration.record(record.duration_ms / 1000, metric)
        if running is not None:
            running.span.end()
            active.instruments.in_flight.add(-1, running.in_flight)

    @hookimpl
    def sollol_on_request_finished(self, record: RequestRecord) -> None:
        active = self._active
        if active is None:
            return
        state = active.open.pop(record.request_id, None)
        error_type = None if record.ok else self._request_error_type(record, state)
        request_attributes: attrs.Attributes = {
            names.ATTEMPTS: record.attempts,
            names.QUEUE_WAIT_MS: record.queue_ms,
        }
        if record.decision is not None:
            request_attributes[names.BACKEND] = record.decision.backend
        if record.first_chunk_ms is not None:
            request_attributes[names.TIME_TO_FIRST_CHUNK_MS] = record.first_chunk_ms
        if state is not None:
            for running in state.attempts.values():  # attempts that never reported an end
                self._end_attempt(active, running, names.ERROR_ABANDONED)
            state.attempts.clear()
            if state.route is not None:
                state.route.set_attribute(names.QUEUE_WAIT_MS, record.queue_ms)
                state.route.end()
                state.route = None
        server = state.server_span if state is not None else _SERVER_SPAN.get()
        if server is not None:
            server.set_attributes({names.REQUEST_ID: record.request_id, **request_attributes})
        else:
            request_span = state.request_span if state is not None else None
            if request_span is None:  # failed before any decision (queue full, timeout)
                request_span = active.tracer.start_span(
                    names.SPAN_REQUEST, kind=SpanKind.INTERNAL,
                    start_time=time.time_ns() - int(record.duration_ms * 1e6),
                    attributes={names.GEN_AI_OPERATION_NAME: attrs.operation_name(
                        record.operation), names.GEN_AI_REQUEST_MODEL: record.model,
                        names.REQUEST_ID: record.request_id})
            request_span.set_attributes(request_attributes)
            if record.input_tokens is not None:
                request_span.set_attribute(names.GEN_AI_USAGE_INPUT_TOKENS, record.input_tokens)
            if record.output_tokens is not None:
                request_span.set_attribute(names.GEN_AI_USAGE_OUTPUT_TOKENS,
                                           record.output_tokens)
            if error_type is not None:
                request_span.set_attribute(names.ERROR_TYPE, error_type)
                request_span.set_status(Status(StatusCode.ERROR, record.error or error_type))
            request_span.end()
        metric: attrs.Attributes = {
            names.GEN_AI_OPERATION_NAME: attrs.operation_name(record.operation),
            names.GEN_AI_REQUEST_MODEL: record.model,
        }
        if record.first_chunk_ms is not None:
            active.instruments.request_time_to_first_chunk.record(
                record.first_chunk_ms / 1000, metric)
        active.instruments.queue_wait.record(record.queue_ms / 1000, metric)
        if error_type is not None:
            metric[names.ERROR_TYPE] = error_type
        active.instruments.request_duration.record(record.duration_ms / 1000, metric)

    # -- helpers -----------------------------------------------------------------------------------

    def _open_request(self, active: _Active, request: InferenceRequest) -> _Request:
        server = _SERVER_SPAN.get()
        if server is not None:
            state = _Request(parent=trace.set_span_in_context(server), server_span=server)
        else:
            span = active.tracer.start_span(
                names.SPAN_REQUEST, context=otel_context.get_current(), kind=SpanKind.INTERNAL,
                start_time=_ns(request.received_at),
                attributes={**attrs.request_attributes(request),
                            names.REQUEST_PRIORITY: request.priority,
                            names.REQUEST_STREAM: request.stream})
            state = _Request(parent=trace.set_span_in_context(span), request_span=span)
        active.open[request.id] = state
        while len(active.open) > active.max_open:
            _, oldest = active.open.popitem(last=False)
            self._abandon(active, oldest)
        return state

    def _end_attempt(self, active: _Active, running: _Attempt, error_type: str) -> None:
        running.span.set_attribute(names.ERROR_TYPE, error_type)
        running.span.set_attribute(names.ABANDONED, True)
        running.span.set_status(Status(StatusCode.ERROR, "the attempt's end was never seen"))
        running.span.end()
        active.instruments.in_flight.add(-1, running.in_flight)

    def _abandon(self, active: _Active, state: _Request) -> None:
        """End the spans of a request whose end will not be seen (table full, plugin stops)."""
        for running in state.attempts.values():
            self._end_attempt(active, running, names.ERROR_ABANDONED)
        state.attempts.clear()
        for span in (state.route, state.request_span):
            if span is not None:
                span.set_attribute(names.ABANDONED, True)
                span.end()
        state.route = state.request_span = None

    @staticmethod
    def _request_error_type(record: RequestRecord, state: _Request | None) -> str:
        if state is not None and state.last_error_type:
            return state.last_error_type
        if record.decision is not None and not record.decision.placed:
            return names.ERROR_NO_ROUTE
        return names.ERROR_TYPE_OTHER

    async def _serve(self, active: _Active, request: web.Request,
                     handler: _Handler) -> web.StreamResponse:
        """The gateway request as a SERVER span, continuing the caller's trace."""
        started = time.monotonic()
        method, original = attrs.http_method(request)
        route = attrs.http_route(request)
        span_attributes = attrs.server_attributes(request, method, original, route)
        parent = self._propagator.extract(request.headers)
        span = active.tracer.start_span(attrs.server_span_name(method, route), context=parent,
                                        kind=SpanKind.SERVER, attributes=span_attributes)
        context_token = otel_context.attach(trace.set_span_in_context(span, parent))
        span_token = _SERVER_SPAN.set(span)
        status: int | None = None
        error_type: str | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except BaseException as exc:
            status = 500 if isinstance(exc, Exception) else None
            error_type = type(exc).__qualname__
            raise
        finally:
            _SERVER_SPAN.reset(span_token)
            otel_context.detach(context_token)
            if status is not None:
                span_attributes[names.HTTP_RESPONSE_STATUS_CODE] = status
                span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, status)
                if status >= 500:
                    error_type = error_type or str(status)
            if error_type is not None:
                span_attributes[names.ERROR_TYPE] = error_type
                span.set_attribute(names.ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            active.instruments.http_server_duration.record(
                time.monotonic() - started, attrs.server_metric_attributes(span_attributes))
