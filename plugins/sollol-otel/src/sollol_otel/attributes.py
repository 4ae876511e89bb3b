"""Attributes of spans and metrics, built from the core's decisions, requests and records.

Pure functions: no span, no meter, no clock.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from sollol_core.types import Decision, InferenceRequest, Operation, split_host_port
from sollol_otel import names

#: Attribute values as OpenTelemetry takes them (str, bool, int, float or sequences of one).
Attributes = dict[str, Any]

_OPERATIONS = {
    Operation.CHAT: names.OP_CHAT,
    Operation.GENERATE: names.OP_TEXT_COMPLETION,
    Operation.EMBED: names.OP_EMBEDDINGS,
    Operation.EMBEDDINGS: names.OP_EMBEDDINGS,
    Operation.SHOW: names.OP_SHOW,
}

#: HTTP semconv's known methods; others are reported as ``_OTHER``.
_HTTP_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT",
                           "TRACE", "QUERY"})


def operation_name(operation: Operation) -> str:
    """``gen_ai.operation.name``: chat, text_completion (generate) or embeddings."""
    return _OPERATIONS.get(operation, operation.value)


def provider_name(decision: Decision) -> str:
    """``gen_ai.provider.name`` from the endpoint kind: ``ollama``, ``llama.cpp`` (llama-server
    nodes and sharded plans), else the kind itself (a third-party backend)."""
    if decision.plan is not None:
        return names.PROVIDER_LLAMACPP
    kind = decision.target.kind if decision.target is not None else ""
    if kind == "ollama":
        return names.PROVIDER_OLLAMA
    if kind.startswith("llamacpp") or kind == "llama.cpp":
        return names.PROVIDER_LLAMACPP
    return kind or names.ERROR_TYPE_OTHER


def backend_kind(decision: Decision) -> str:
    if decision.plan is not None:
        return "sharded"
    return decision.target.kind if decision.target is not None else "none"


def request_attributes(request: InferenceRequest) -> Attributes:
    """What every span of a request says about it."""
    return {
        names.GEN_AI_OPERATION_NAME: operation_name(request.operation),
        names.GEN_AI_REQUEST_MODEL: request.model,
        names.REQUEST_ID: request.id,
    }


def route_attributes(decision: Decision, request: InferenceRequest, attempt: int) -> Attributes:
    """The ``sollol.route`` span: the policy's choice, its reason and every candidate."""
    attributes: Attributes = {
        **request_attributes(request),
        names.REQUEST_PRIORITY: request.priority,
        names.ATTEMPT: attempt,
        names.POLICY: decision.policy,
        names.REASON: decision.reason,
        names.PLACED: decision.placed,
        names.BACKEND: decision.backend,
        names.BACKEND_KIND: backend_kind(decision),
        names.CANDIDATES: [c.endpoint.key for c in decision.candidates],
        names.CANDIDATE_SCORES: [float(c.score) for c in decision.candidates],
        names.CANDIDATE_NOTES: [c.note for c in decision.candidates],
    }
    if decision.placed:
        attributes[names.GEN_AI_PROVIDER_NAME] = provider_name(decision)
    plan = decision.plan
    if plan is not None:
        attributes[names.SHARD_WORKERS] = [w.key for w in plan.workers]
        attributes[names.SHARD_TENSOR_SPLIT] = [float(x) for x in plan.tensor_split]
        if plan.layers:
            attributes[names.SHARD_LAYERS] = [int(x) for x in plan.layers]
    return attributes


def client_metric_attributes(decision: Decision, request_model: str,
                             operation: Operation) -> Attributes:
    """The GenAI client metrics' attributes (low cardinality: no request id)."""
    attributes: Attributes = {
        names.GEN_AI_OPERATION_NAME: operation_name(operation),
        names.GEN_AI_PROVIDER_NAME: provider_name(decision),
        names.GEN_AI_REQUEST_MODEL: request_model,
    }
    # A sharded request runs on a coordinator the decision does not name: no server.address.
    if decision.target is not None:
        attributes[names.SERVER_ADDRESS] = decision.target.host
        attributes[names.SERVER_PORT] = decision.target.port
    return attributes


def client_span_name(request: InferenceRequest) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``."""
    return f"{operation_name(request.operation)} {request.model}"


def client_attributes(decision: Decision, request: InferenceRequest, attempt: int) -> Attributes:
    return {
        **client_metric_attributes(decision, request.model, request.operation),
        names.REQUEST_ID: request.id,
        names.REQUEST_STREAM: request.stream,
        names.ATTEMPT: attempt,
        names.BACKEND: decision.backend,
    }


def in_flight_attributes(decision: Decision) -> Attributes:
    return {names.BACKEND: decision.backend, names.GEN_AI_PROVIDER_NAME: provider_name(decision)}


# -- HTTP server -----------------------------------------------------------------------------------


def http_method(request: web.Request) -> tuple[str, str | None]:
    """``http.request.method`` and, for a method HTTP semconv does not know, the original."""
    method = request.method.upper()
    if method in _HTTP_METHODS:
        return method, None
    return names.HTTP_METHOD_OTHER, request.method


def http_route(request: web.Request) -> str | None:
    """The matched route's template (``/api/chat``, ``/v1/models/{model}``); None for no match."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return resource.canonical or None


def server_span_name(method: str, route: str | None) -> str:
    """``{method} {http.route}``, or the method alone without a route (``HTTP`` for _OTHER)."""
    shown = "HTTP" if method == names.HTTP_METHOD_OTHER else method
    return f"{shown} {route}" if route else shown


def server_attributes(request: web.Request, method: str, original: str | None,
                      route: str | None) -> Attributes:
    attributes: Attributes = {
        names.HTTP_REQUEST_METHOD: method,
        names.URL_PATH: request.path,
        names.URL_SCHEME: request.scheme,
        names.NETWORK_PROTOCOL_VERSION: f"{request.version.major}.{request.version.minor}",
    }
    if original is not None:
        attributes[names.HTTP_REQUEST_METHOD_ORIGINAL] = original
    if route:
        attributes[names.HTTP_ROUTE] = route
    try:
        host, port = split_host_port(request.host, 443 if request.scheme == "https" else 80)
    except ValueError:
        pass
    else:
        attributes[names.SERVER_ADDRESS] = host
        attributes[names.SERVER_PORT] = port
    if request.remote:
        attributes[names.CLIENT_ADDRESS] = request.remote
    agent = request.headers.get("User-Agent")
    if agent:
        attributes[names.USER_AGENT_ORIGINAL] = agent
    return attributes


def server_metric_attributes(attributes: Attributes) -> Attributes:
    """The subset of a SERVER span's attributes that http.server.request.duration takes."""
    keep = (names.HTTP_REQUEST_METHOD, names.URL_SCHEME, names.HTTP_ROUTE,
            names.HTTP_RESPONSE_STATUS_CODE, names.ERROR_TYPE, names.NETWORK_PROTOCOL_VERSION)
    return {k: attributes[k] for k in keep if k in attributes}
