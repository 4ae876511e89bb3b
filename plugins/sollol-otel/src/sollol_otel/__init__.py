"""SOLLOL's OpenTelemetry plugin: traces and metrics of the gateway, routing and every upstream
attempt, exported over OTLP (http/protobuf or gRPC) as the OTEL_* environment says."""

from sollol_otel.tracing import OtelPlugin

__all__ = ["OtelPlugin"]
