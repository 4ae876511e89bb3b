from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from attrs import define
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sollol_otel import OtelPlugin

from sollol_core.config import PluginSettings
from sollol_core.plugins import Plugins, environment_variables


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the SOLLOL and OTEL settings they set themselves."""
    for name in [*environment_variables(), "SOLLOL_CONFIG", "OLLAMA_HOST"]:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@define
class Telemetry:
    """An OtelPlugin over in-memory exporters, and what it exported."""

    plugin: OtelPlugin
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def of_kind(self, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is kind]

    def points(self, metric: str) -> list[Any]:
        """Every data point of ``metric`` in one collection."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def sums(self, metric: str) -> dict[frozenset[tuple[str, Any]], float]:
        return {frozenset((p.attributes or {}).items()): p.value for p in self.points(metric)
                if isinstance(p, NumberDataPoint)}


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Telemetry(OtelPlugin(tracer_provider=tracer_provider, meter_provider=meter_provider),
                    exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def isolated(*extra: tuple[str, object], load: tuple[str, ...] = ()) -> Plugins:
    """Built-ins, the entry points in ``load`` and the given plugins only."""
    return Plugins.load(PluginSettings(load=load), extra=extra)
