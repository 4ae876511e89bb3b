"""Prometheus metrics at ``GET /metrics``.

Request metrics are counted by :class:`RequestMetrics`, an observer registered on the router's
plugin manager; fleet metrics (health, memory, in-flight, circuits, queue) are read from the
router when Prometheus scrapes, by :class:`FleetCollector`, with the plugins' own
(``sollol_metrics``: the llama.cpp plugin's coordinators). Each application has its own
:class:`~prometheus_client.CollectorRegistry`, so gateways never share (or clash over) metrics.

``/metrics`` is behind the gateway's API keys like every other path but ``/`` and ``/health``:
it names models, nodes and their addresses. Give Prometheus the key as a bearer token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from sollol_core.breaker import CircuitState
from sollol_core.gateway.common import ROUTER
from sollol_core.hookspecs import hookimpl
from sollol_core.observatory import outcome_of
from sollol_core.router import Router
from sollol_core.types import AttemptRecord, Decision, Health, RequestRecord

PATH = "/metrics"
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)

#: Whole requests take from milliseconds (embeddings) to minutes (long generations).
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
FIRST_CHUNK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The model label of refused requests for models no node holds.
UNKNOWN_MODEL = "unknown"


def setup(app: web.Application) -> CollectorRegistry:
    """Give ``app`` its registry, the request observer, the fleet collector and ``/metrics``."""
    router = app[ROUTER]
    registry = CollectorRegistry(auto_describe=True)
    observer = RequestMetrics(registry, router)
    name = f"sollol-gateway-metrics-{id(app):x}"
    router.plugins.register(name, observer)
    registry.register(FleetCollector(router))
    app[REGISTRY] = registry

    async def unregister(app: web.Application) -> None:
        router.plugins.unregister(name)

    app.on_cleanup.append(unregister)
    app.router.add_get(PATH, _metrics)
    return registry


async def _metrics(request: web.Request) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(request.app[REGISTRY]),
                        headers={"Content-Type": content_type})


def backend_of(decision: Decision | None) -> str:
    """The ``backend`` label: a node's key, ``sharded:<workers>``, or ``none`` (never ran)."""
    return decision.backend if decision is not None else "none"


@define(eq=False)
class RequestMetrics:
    """Counts every finished request and failed attempt (an observer plugin).

    A refused request for a model no node holds is counted under model ``unknown``: clients
    choose model names, and each name would otherwise be a new series for good.
    """

    registry: CollectorRegistry
    router: Router
    requests: Counter = field(init=False)
    attempt_errors: Counter = field(init=False)
    duration: Histogram = field(init=False)
    first_chunk: Histogram = field(init=False)
    tokens: Counter = field(init=False)
    #: Each metric's children by label values: ``labels()`` checks and locks on every call,
    #: and a request would make up to five such calls.
    _bound: dict[tuple[int, tuple[str, ...]], Any] = field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "sollol_requests", "Finished requests by model, operation, backend and outcome "
            "(ok, error: failed on a node, refused: never reached one).",
            ["model", "operation", "backend", "outcome"], registry=r)
        self.attempt_errors = Counter(
            "sollol_attempt_errors", "Failed attempts by backend and error type; a request that "
            "fails over counts once per failed node.",
            ["model", "operation", "backend", "error_type"], registry=r)
        self.duration = Histogram(
            "sollol_request_duration_seconds", "Time from receiving a request to its last chunk.",
            ["model", "operation", "backend"], buckets=DURATION_BUCKETS, registry=r)
        self.first_chunk = Histogram(
            "sollol_time_to_first_chunk_seconds", "Time from receiving a request to its first "
            "chunk, queueing and fail-over included.",
            ["model", "operation", "backend"], buckets=FIRST_CHUNK_BUCKETS, registry=r)
        self.tokens = Counter(
            "sollol_tokens", "Tokens of finished requests as backends counted them "
            "(type: input for the prompt, output for the generated text).",
            ["model", "backend", "type"], registry=r)

    @hookimpl
    def sollol_on_attempt_finished(self, record: AttemptRecord) -> None:
        if not record.ok and record.error_type != "cancelled":
            self.attempt_errors.labels(record.model, record.operation.value,
                                       backend_of(record.decision),
                                       record.error_type or "unknown").inc()

    @hookimpl
    def sollol_on_request_finished(self, record: RequestRecord) -> None:
        model, operation, backend = record.model, record.operation.value, backend_of(
            record.decision)
        outcome = outcome_of(record)
        if outcome == "refused" and not any(n.holds(model)
                                            for n in self.router.fleet.snapshot().nodes):
            model = UNKNOWN_MODEL
        child = self._child
        child(self.requests, model, operation, backend, outcome).inc()
        if outcome == "refused":
            return  # no latency worth a histogram
        child(self.duration, model, operation, backend).observe(record.duration_ms / 1000)
        if record.first_chunk_ms is not None:
            child(self.first_chunk, model, operation, backend).observe(
                record.first_chunk_ms / 1000)
        if record.input_tokens:
            child(self.tokens, model, backend, "input").inc(record.input_tokens)
        if record.output_tokens:
            child(self.tokens, model, backend, "output").inc(record.output_tokens)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, bound once per label set."""
        key = (id(metric), labels)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = metric.labels(*labels)
        return bound


@define(eq=False)
class FleetCollector(Collector):
    """Gauges computed from the router's current state at every scrape."""

    router: Router

    def describe(self) -> Iterable[Metric]:
        return ()  # unknown until collected: the registry must not call collect() early

    def collect(self) -> Iterable[Metric]:
        router = self.router
        fleet = router.fleet.snapshot()
        queue = GaugeMetricFamily("sollol_queue_depth",
                                  "Requests waiting in the admission queue for capacity.")
        queue.add_metric([], len(router.queue))
        yield queue
        labels = ["node", "kind", "role"]
        health = GaugeMetricFamily("sollol_node_health", "1 for the node's health state as its "
                                   "last probe saw it, 0 for the other states.",
                                   labels=[*labels, "state"])
        in_flight = GaugeMetricFamily("sollol_node_in_flight",
                                      "Requests the gateway is running on the node.", labels=labels)
        parallel = GaugeMetricFamily("sollol_node_parallel",
                                     "Requests the node serves at once.", labels=labels)
        free = GaugeMetricFamily("sollol_node_free_memory_bytes", "Memory free for models on the "
                                 "node: its devices as probed, else its machine's telemetry.",
                                 labels=labels)
        total = GaugeMetricFamily("sollol_node_total_memory_bytes",
                                  "Memory of the node's devices as probed.", labels=labels)
        for node in fleet.nodes:
            values = [node.endpoint.key, node.endpoint.kind, node.role.value]
            for state in Health:
                health.add_metric([*values, state.value], 1.0 if node.health is state else 0.0)
            in_flight.add_metric(values, node.in_flight)
            parallel.add_metric(values, node.parallel)
            free_bytes = fleet.free_bytes_of(node)
            if free_bytes is not None:
                free.add_metric(values, free_bytes)
            if node.devices:
                total.add_metric(values, node.total_bytes)
        yield from (health, in_flight, parallel, free, total)
        yield from _circuits(router)
        yield from router.plugins.metrics()  # what plugins run (llama.cpp: coordinators)


def _circuits(router: Router) -> Iterable[Metric]:
    state = GaugeMetricFamily("sollol_circuit_state", "1 for the circuit breaker's state for the "
                              "node (closed: in use, open: skipped, half-open: on trial), 0 for "
                              "the others.", labels=["node", "state"])
    ratio = GaugeMetricFamily("sollol_circuit_failure_ratio",
                              "Share of the node's recent attempts that failed.", labels=["node"])
    for circuit in router.breakers.snapshots():
        for value in CircuitState:
            state.add_metric([circuit.node, value.value], 1.0 if circuit.state is value else 0.0)
        ratio.add_metric([circuit.node], circuit.failure_ratio)
    return state, ratio
