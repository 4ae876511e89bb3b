"""The plugin's metric instruments, made once per meter provider."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

from attrs import frozen
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation, UpDownCounter

from sollol_core.router import Router
from sollol_otel import names


@frozen
class Instruments:
    operation_duration: Histogram
    token_usage: Histogram
    time_to_first_chunk: Histogram
    http_server_duration: Histogram
    request_duration: Histogram
    request_time_to_first_chunk: Histogram
    queue_wait: Histogram
    in_flight: UpDownCounter

    @classmethod
    def create(cls, meter: Meter, routers: Mapping[int, weakref.ref[Router]]) -> Instruments:
        """The instruments; ``sollol.queue.depth`` reads the queues of ``routers`` (weakly
        held, by identity) and reports nothing while there are none."""

        def queue_depth(options: CallbackOptions) -> Iterable[Observation]:
            watched = [r for r in (ref() for ref in list(routers.values())) if r is not None]
            if watched:
                yield Observation(sum(len(r.queue) for r in watched))

        meter.create_observable_gauge(
            names.METRIC_QUEUE_DEPTH, callbacks=[queue_depth], unit=names.UNIT_REQUESTS,
            description="Requests waiting in the admission queue for a node with capacity.")
        return cls(
            operation_duration=meter.create_histogram(
                names.METRIC_OPERATION_DURATION, unit=names.UNIT_SECONDS,
                description="GenAI operation duration: one attempt on one backend.",
                explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS)),
            token_usage=meter.create_histogram(
                names.METRIC_TOKEN_USAGE, unit=names.UNIT_TOKENS,
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=list(names.TOKEN_BUCKETS)),
            time_to_first_chunk=meter.create_histogram(
                names.METRIC_TIME_TO_FIRST_CHUNK, unit=names.UNIT_SECONDS,
                description="Time from sending an attempt to its first chunk.",
                explicit_bucket_boundaries_advisory=list(names.TIME_TO_FIRST_CHUNK_BUCKETS)),
            http_server_duration=meter.create_histogram(
                names.METRIC_HTTP_SERVER_DURATION, unit=names.UNIT_SECONDS,
                description="Duration of HTTP server requests to the gateway.",
                explicit_bucket_boundaries_advisory=list(names.HTTP_DURATION_BUCKETS)),
            request_duration=meter.create_histogram(
                names.METRIC_REQUEST_DURATION, unit=names.UNIT_SECONDS,
                description="Whole requests: queue, placement, fail-over and response.",
                explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS)),
            request_time_to_first_chunk=meter.create_histogram(
                names.METRIC_REQUEST_TIME_TO_FIRST_CHUNK, unit=names.UNIT_SECONDS,
                description="Time from a request's arrival to its first chunk (queue and "
                            "fail-over included).",
                explicit_bucket_boundaries_advisory=list(names.TIME_TO_FIRST_CHUNK_BUCKETS)),
            queue_wait=meter.create_histogram(
                names.METRIC_QUEUE_WAIT, unit=names.UNIT_SECONDS,
                description="Time a request waited in the admission queue.",
                explicit_bucket_boundaries_advisory=list(names.TIME_TO_FIRST_CHUNK_BUCKETS)),
            in_flight=meter.create_up_down_counter(
                names.METRIC_IN_FLIGHT, unit=names.UNIT_REQUESTS,
                description="Attempts running on each backend now."),
        )
