"""Ollama-shaped requests to llama-server's OpenAI endpoints, and its answers back into Ollama's
shape, so the gateway serves both APIs from a llama.cpp backend. Pure functions, no I/O.

The mapping itself, both ways, is :mod:`sollol_core.codec`; what is llama-server's is here:
generate without ``raw`` goes through chat completions (as Ollama applies the model's chat
template to a prompt) and ``raw`` to plain completions; generations are always streamed; what
llama-server does not take is left out; its ``timings`` give Ollama's durations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sollol_core import codec
from sollol_core.codec import now_rfc3339
from sollol_core.types import InferenceRequest, Operation

__all__ = ["StreamTranslator", "from_openai", "now_rfc3339", "to_openai"]

#: Fields of the codec's OpenAI requests that SOLLOL does not send llama-server: ``logprobs``
#: with tools on a stream is refused there; the others it has no use for.
_NOT_SENT = ("reasoning_effort", "logprobs", "top_logprobs", "suffix", "dimensions")


def to_openai(request: InferenceRequest) -> tuple[str, dict[str, Any]]:
    """(path, body) of the llama-server request that answers ``request``."""
    body = request.body
    if request.operation is Operation.EMBED:
        path, out = "/v1/embeddings", codec.encode_embed_request(body)
    elif request.operation is Operation.EMBEDDINGS:
        path, out = "/v1/embeddings", codec.encode_embed_request({"input": body.get("prompt")})
    elif request.operation is Operation.GENERATE and body.get("raw"):
        path, out = "/v1/completions", codec.encode_completion_request(body)
    elif request.operation is Operation.GENERATE:
        messages = [{"role": "system", "content": body["system"]}] if body.get("system") else []
        messages.append({"role": "user", "content": body.get("prompt") or ""})
        path, out = "/v1/chat/completions", codec.encode_chat_request(
            {"options": body.get("options"), "format": body.get("format"),
             "messages": messages})
    else:
        path, out = "/v1/chat/completions", codec.encode_chat_request(body)
    out["model"] = request.model
    for field in _NOT_SENT:
        out.pop(field, None)
    if path != "/v1/embeddings":
        # Generations are always streamed from llama-server, so that a slow but healthy one
        # shows it is alive token by token; the router folds the chunks for a client that
        # wants one answer.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return path, out


def _ns(milliseconds: Any) -> int:
    return int(float(milliseconds) * 1e6) if isinstance(milliseconds, int | float) else 0


def _metrics(answer: Mapping[str, Any], started: float) -> dict[str, Any]:
    """Ollama's metrics: the counts of ``usage`` (``timings`` win), durations from ``timings``."""
    counts = codec.decode_usage(answer.get("usage"))
    timings = answer.get("timings") or {}
    metrics: dict[str, Any] = {"total_duration": int((time.monotonic() - started) * 1e9),
                               "load_duration": 0}
    for count, n, ms in (("prompt_eval_count", "prompt_n", "prompt_ms"),
                         ("eval_count", "predicted_n", "predicted_ms")):
        value = timings.get(n, counts.get(count))
        if value is not None:
            metrics[count] = int(value)
            metrics[count.replace("count", "duration")] = _ns(timings.get(ms))
    return metrics


def from_openai(request: InferenceRequest, answer: Mapping[str, Any],
                started: float) -> dict[str, Any]:
    """A whole (non-streamed) llama-server answer as Ollama's one response object (embeddings;
    generations are streamed)."""
    if request.operation in (Operation.EMBED, Operation.EMBEDDINGS):
        found = codec.decode_embed_reply(answer)
        if request.operation is Operation.EMBEDDINGS:
            return {"embedding": found["embeddings"][0] if found["embeddings"] else []}
        return {"model": request.model, "embeddings": found["embeddings"],
                "total_duration": int((time.monotonic() - started) * 1e9),
                "prompt_eval_count": found["prompt_eval_count"]}
    chunk = codec.decode_reply(answer, model=request.model,
                               chat=request.operation is Operation.CHAT)
    chunk.update(_metrics(answer, started))
    return chunk


class StreamTranslator(codec.StreamDecoder):
    """Server-sent chunks of llama-server, one at a time, to Ollama NDJSON chunks; the final one
    has Ollama's metrics from llama-server's ``timings``."""

    def __init__(self, request: InferenceRequest, started: float) -> None:
        super().__init__(request.model, chat=request.operation is Operation.CHAT)
        self.started = started

    def metrics(self, last: Mapping[str, Any]) -> dict[str, Any]:
        return _metrics(last, self.started)
