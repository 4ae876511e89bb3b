"""Every span name, attribute name, attribute value and metric name this plugin emits.

OpenTelemetry's semantic conventions where one exists (HTTP server, GenAI client, ``error.type``),
``sollol.*`` for what only SOLLOL knows. Nothing else in the package spells a name.
"""

from __future__ import annotations

from typing import Final

# -- instrumentation scope ---------------------------------------------------------------------

SCOPE: Final = "sollol_otel"
DEFAULT_SERVICE_NAME: Final = "sollol"

# -- span names ----------------------------------------------------------------------------------

#: The routing decision (INTERNAL), one per attempt.
SPAN_ROUTE: Final = "sollol.route"
#: The request when no gateway SERVER span holds it (Python API), INTERNAL.
SPAN_REQUEST: Final = "sollol.request"

# -- general and HTTP semantic conventions -------------------------------------------------------

ERROR_TYPE: Final = "error.type"
#: ``error.type``'s fallback when the failure has no better name.
ERROR_TYPE_OTHER: Final = "_OTHER"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL: Final = "http.request.method_original"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
USER_AGENT_ORIGINAL: Final = "user_agent.original"
NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
#: The method value for methods HTTP semconv does not know.
HTTP_METHOD_OTHER: Final = "_OTHER"

# -- GenAI semantic conventions ------------------------------------------------------------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"

#: gen_ai.operation.name values
OP_CHAT: Final = "chat"
OP_TEXT_COMPLETION: Final = "text_completion"
OP_EMBEDDINGS: Final = "embeddings"
#: Ollama's /api/show (model details): no GenAI operation, so a custom value.
OP_SHOW: Final = "show"

#: gen_ai.provider.name values
PROVIDER_OLLAMA: Final = "ollama"
PROVIDER_LLAMACPP: Final = "llama.cpp"

#: gen_ai.token.type values
TOKEN_INPUT: Final = "input"
TOKEN_OUTPUT: Final = "output"

# -- SOLLOL attributes ---------------------------------------------------------------------------

REQUEST_ID: Final = "sollol.request.id"
REQUEST_PRIORITY: Final = "sollol.request.priority"
REQUEST_STREAM: Final = "sollol.request.stream"
#: The attempt a route or client span belongs to (1, then 2 after a fail-over...).
ATTEMPT: Final = "sollol.attempt"
#: How many attempts the request took (on the request / SERVER span).
ATTEMPTS: Final = "sollol.attempts"
#: Where the request runs: an endpoint key (``ollama://host:port``) or ``sharded:a:1,b:2``.
BACKEND: Final = "sollol.backend"
#: The kind of the chosen endpoint (``ollama``, ``llamacpp``...), or ``sharded``.
BACKEND_KIND: Final = "sollol.backend.kind"
POLICY: Final = "sollol.policy"
REASON: Final = "sollol.reason"
PLACED: Final = "sollol.placed"
#: Parallel arrays: the candidates' endpoint keys, their scores and notes, best first.
CANDIDATES: Final = "sollol.candidates"
CANDIDATE_SCORES: Final = "sollol.candidate.scores"
CANDIDATE_NOTES: Final = "sollol.candidate.notes"
#: Milliseconds the request waited in the admission queue before this decision (all attempts).
QUEUE_WAIT_MS: Final = "sollol.queue.wait_ms"
SHARD_WORKERS: Final = "sollol.shard.workers"
SHARD_TENSOR_SPLIT: Final = "sollol.shard.tensor_split"
SHARD_LAYERS: Final = "sollol.shard.layers"
#: Milliseconds from sending the attempt (or the request) to its first chunk.
TIME_TO_FIRST_CHUNK_MS: Final = "sollol.time_to_first_chunk_ms"
#: Set on spans ended because the plugin's table of open requests was full.
ABANDONED: Final = "sollol.otel.abandoned"
#: ``error.type`` of a request refused by placement (no node can run it).
ERROR_NO_ROUTE: Final = "no_route"
#: ``error.type`` of spans ended because the table of open requests was full.
ERROR_ABANDONED: Final = "abandoned"

# -- metrics ---------------------------------------------------------------------------------------

#: GenAI client metrics, one measurement per attempt (what SOLLOL, as the client, saw upstream).
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
#: The HTTP server metric of the gateway.
METRIC_HTTP_SERVER_DURATION: Final = "http.server.request.duration"
#: Whole requests as SOLLOL's clients see them: queue, placement, fail-over and stream included.
METRIC_REQUEST_DURATION: Final = "sollol.request.duration"
METRIC_REQUEST_TIME_TO_FIRST_CHUNK: Final = "sollol.request.time_to_first_chunk"
METRIC_QUEUE_WAIT: Final = "sollol.queue.wait"
METRIC_QUEUE_DEPTH: Final = "sollol.queue.depth"
METRIC_IN_FLIGHT: Final = "sollol.backend.in_flight"

UNIT_SECONDS: Final = "s"
UNIT_TOKENS: Final = "{token}"
UNIT_REQUESTS: Final = "{request}"

#: Bucket boundaries the GenAI conventions advise.
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                           20.48, 40.96, 81.92)
TIME_TO_FIRST_CHUNK_BUCKETS: Final = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                        16777216, 67108864)
#: HTTP semconv's advice for http.server.request.duration.
HTTP_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                                5.0, 7.5, 10.0)

# -- OTEL_* environment variables read at setup ----------------------------------------------------

ENV_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"
ENV_SERVICE_NAME: Final = "OTEL_SERVICE_NAME"
ENV_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
ENV_METRICS_EXPORTER: Final = "OTEL_METRICS_EXPORTER"
ENV_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_METRICS_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
ENV_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_TRACES_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
ENV_METRICS_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
ENV_TRACES_SAMPLER: Final = "OTEL_TRACES_SAMPLER"
ENV_EXCLUDED_URLS: Final = "OTEL_PYTHON_EXCLUDED_URLS"

PROTOCOL_HTTP: Final = "http/protobuf"
PROTOCOL_GRPC: Final = "grpc"
EXPORTER_OTLP: Final = "otlp"
EXPORTER_CONSOLE: Final = "console"
EXPORTER_NONE: Final = "none"
