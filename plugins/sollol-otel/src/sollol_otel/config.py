"""The OTEL_* environment, read when a router starts (never at import), and the providers it asks
for.

The rule when nothing is configured: no exporter, so nothing is recorded or sent, but traces are
still continued (an incoming ``traceparent`` reaches the backends with this plugin's client span
as parent). An exporter is on when its ``OTEL_*_EXPORTER`` says so, or, when that is unset, when
an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the per-signal one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from attrs import frozen
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from sollol_core.plugins import core_version
from sollol_otel import names

log = logging.getLogger(__name__)

_KNOWN_EXPORTERS = (names.EXPORTER_OTLP, names.EXPORTER_CONSOLE)
_KNOWN_PROTOCOLS = (names.PROTOCOL_HTTP, names.PROTOCOL_GRPC)


@frozen
class Signal:
    """How one signal (traces or metrics) is exported: exporter names and the OTLP protocol."""

    exporters: tuple[str, ...]
    protocol: str

    def describe(self) -> str:
        if not self.exporters:
            return "off"
        return ", ".join(f"otlp ({self.protocol})" if e == names.EXPORTER_OTLP else e
                         for e in self.exporters)


@frozen
class OtelConfig:
    """What the environment asks for."""

    disabled: bool
    service_name: str
    traces: Signal
    metrics: Signal
    #: OTEL_TRACES_SAMPLER is set: the SDK's sampler from the environment wins over ours.
    sampler_from_env: bool
    #: Paths (regular expressions, comma-separated in OTEL_PYTHON_EXCLUDED_URLS) not traced.
    excluded_urls: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> OtelConfig:
        env = os.environ if environ is None else environ
        return cls(
            disabled=env.get(names.ENV_SDK_DISABLED, "").strip().lower() == "true",
            service_name=env.get(names.ENV_SERVICE_NAME, "").strip(),
            traces=_signal(env, names.ENV_TRACES_EXPORTER, names.ENV_TRACES_ENDPOINT,
                           names.ENV_TRACES_PROTOCOL),
            metrics=_signal(env, names.ENV_METRICS_EXPORTER, names.ENV_METRICS_ENDPOINT,
                            names.ENV_METRICS_PROTOCOL),
            sampler_from_env=bool(env.get(names.ENV_TRACES_SAMPLER, "").strip()),
            excluded_urls=tuple(u.strip() for u in env.get(names.ENV_EXCLUDED_URLS, "").split(",")
                                if u.strip()),
        )


def _signal(env: Mapping[str, str], exporter_var: str, endpoint_var: str,
            protocol_var: str) -> Signal:
    raw = env.get(exporter_var, "").strip().lower()
    if raw:
        wanted = [e.strip() for e in raw.split(",") if e.strip()]
    elif env.get(names.ENV_ENDPOINT, "").strip() or env.get(endpoint_var, "").strip():
        wanted = [names.EXPORTER_OTLP]
    else:
        wanted = []
    exporters: list[str] = []
    for name in wanted:
        if name == names.EXPORTER_NONE:
            continue
        if name not in _KNOWN_EXPORTERS:
            log.warning("%s=%s: unknown exporter %r ignored (sollol-otel knows %s)",
                        exporter_var, raw, name, ", ".join(_KNOWN_EXPORTERS))
            continue
        if name not in exporters:
            exporters.append(name)
    protocol = (env.get(protocol_var, "").strip() or env.get(names.ENV_PROTOCOL, "").strip()
                or names.PROTOCOL_HTTP).lower()
    if protocol not in _KNOWN_PROTOCOLS:
        log.warning("OTLP protocol %r is not supported; using %s", protocol, names.PROTOCOL_HTTP)
        protocol = names.PROTOCOL_HTTP
    return Signal(tuple(exporters), protocol)


def resource(config: OtelConfig) -> Resource:
    """``service.name`` from OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES, else "sollol"."""
    detected = Resource.create({SERVICE_VERSION: core_version()})
    name = config.service_name
    if not name:
        found = detected.attributes.get(SERVICE_NAME)
        name = (str(found) if found and not str(found).startswith("unknown_service")
                else names.DEFAULT_SERVICE_NAME)
    return detected.merge(Resource({SERVICE_NAME: name}))


def tracer_provider(config: OtelConfig, service: Resource) -> TracerProvider:
    """A provider exporting where ``config`` says; with no exporter, spans are not recorded (but
    a sampled incoming trace stays sampled, and every span still has ids to propagate)."""
    exporting = bool(config.traces.exporters)
    sampler = None if exporting or config.sampler_from_env else ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=service, sampler=sampler,
                              shutdown_on_exit=False)
    for name in config.traces.exporters:
        if name == names.EXPORTER_CONSOLE:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter(
                config.traces.protocol)))
    return provider


def meter_provider(config: OtelConfig, service: Resource) -> MeterProvider:
    readers: list[MetricReader] = []
    for name in config.metrics.exporters:
        exporter: MetricExporter = (ConsoleMetricExporter() if name == names.EXPORTER_CONSOLE
                                    else _otlp_metric_exporter(config.metrics.protocol))
        readers.append(PeriodicExportingMetricReader(exporter))
    return MeterProvider(resource=service, metric_readers=readers,
                         shutdown_on_exit=False)


def _otlp_span_exporter(protocol: str) -> SpanExporter:
    # The exporters read their endpoint, headers, timeout, compression and certificates from the
    # OTEL_EXPORTER_OTLP_* environment themselves.
    if protocol == names.PROTOCOL_GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )
        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )
    return HttpSpanExporter()


def _otlp_metric_exporter(protocol: str) -> MetricExporter:
    if protocol == names.PROTOCOL_GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )
        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )
    return HttpMetricExporter()
