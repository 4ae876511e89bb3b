"""Ollama-shaped requests to llama-server's OpenAI endpoints, and its answers back into Ollama's
shape, so the gateway serves both APIs from a llama.cpp backend. Pure functions, no I/O.

Generate without ``raw`` goes through chat completions, as Ollama applies the model's chat
template to a prompt; ``raw`` goes to plain completions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sollol_core.types import InferenceRequest, Operation

#: Ollama option -> llama-server request field (llama-server accepts its samplers by name).
_OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "seed": "seed", "num_predict": "max_tokens", "stop": "stop",
    "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "typical_p": "typical_p",
    "repeat_last_n": "repeat_last_n",
}


def now_rfc3339() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")


def to_openai(request: InferenceRequest) -> tuple[str, dict[str, Any]]:
    """(path, body) of the llama-server request that answers ``request``."""
    body = request.body
    if request.operation is Operation.EMBED:
        return "/v1/embeddings", {"model": request.model, "input": body.get("input") or ""}
    if request.operation is Operation.EMBEDDINGS:
        return "/v1/embeddings", {"model": request.model, "input": body.get("prompt") or ""}
    # Generations are always streamed from llama-server, so that a slow but healthy one shows
    # it is alive token by token; the router folds the chunks for a client that wants one answer.
    out: dict[str, Any] = {"model": request.model, "stream": True,
                           "stream_options": {"include_usage": True}}
    for option, value in dict(body.get("options") or {}).items():
        if option in _OPTIONS and value is not None:
            out[_OPTIONS[option]] = value
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, Mapping):
        out["response_format"] = {"type": "json_schema", "json_schema": {"schema": dict(fmt)}}
    if request.operation is Operation.GENERATE and body.get("raw"):
        out["prompt"] = body.get("prompt") or ""
        return "/v1/completions", out
    if request.operation is Operation.GENERATE:
        messages: list[dict[str, Any]] = []
        if body.get("system"):
            messages.append({"role": "system", "content": body["system"]})
        messages.append({"role": "user", "content": body.get("prompt") or ""})
    else:
        messages = [_message(m) for m in body.get("messages") or []]
        if body.get("tools"):
            out["tools"] = list(body["tools"])
    out["messages"] = messages
    return "/v1/chat/completions", out


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.get("role", "user")}
    images = message.get("images") or []
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.get("content", "")}]
        parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{i}"}}
                  for i in images]
        out["content"] = parts
    else:
        out["content"] = message.get("content", "")
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"id": call.get("id") or f"call_{index}", "type": "function",
             "function": {"name": call["function"]["name"],
                          "arguments": json.dumps(call["function"].get("arguments", {}))}}
            for index, call in enumerate(message["tool_calls"])]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _ns(milliseconds: Any) -> int:
    return int(float(milliseconds) * 1e6) if isinstance(milliseconds, int | float) else 0


def _metrics(answer: Mapping[str, Any], started: float) -> dict[str, Any]:
    usage = answer.get("usage") or {}
    timings = answer.get("timings") or {}
    metrics: dict[str, Any] = {"total_duration": int((time.monotonic() - started) * 1e9),
                               "load_duration": 0}
    prompt = timings.get("prompt_n", usage.get("prompt_tokens"))
    generated = timings.get("predicted_n", usage.get("completion_tokens"))
    if prompt is not None:
        metrics["prompt_eval_count"] = int(prompt)
        metrics["prompt_eval_duration"] = _ns(timings.get("prompt_ms"))
    if generated is not None:
        metrics["eval_count"] = int(generated)
        metrics["eval_duration"] = _ns(timings.get("predicted_ms"))
    return metrics


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for index, call in enumerate(calls or []):
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = {"raw": arguments}
        out.append({"id": call.get("id") or f"call_{index}",
                    "function": {"index": index, "name": function.get("name", ""),
                                 "arguments": parsed}})
    return out


def _piece(request: InferenceRequest, text: str, *, done: bool,
           tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": request.model, "created_at": now_rfc3339()}
    if request.operation is Operation.CHAT:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        chunk["message"] = message
    else:
        chunk["response"] = text
    chunk["done"] = done
    return chunk


def from_openai(request: InferenceRequest, answer: Mapping[str, Any],
                started: float) -> dict[str, Any]:
    """A whole (non-streamed) llama-server answer as Ollama's one response object (embeddings;
    generations are streamed)."""
    if request.operation in (Operation.EMBED, Operation.EMBEDDINGS):
        vectors = [d.get("embedding", []) for d in answer.get("data") or []]
        if request.operation is Operation.EMBEDDINGS:
            return {"embedding": vectors[0] if vectors else []}
        usage = answer.get("usage") or {}
        return {"model": request.model, "embeddings": vectors,
                "total_duration": int((time.monotonic() - started) * 1e9),
                "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}
    choice = (answer.get("choices") or [{}])[0]
    if "message" in choice:
        text = (choice["message"] or {}).get("content") or ""
        calls = _tool_calls((choice["message"] or {}).get("tool_calls"))
    else:
        text, calls = choice.get("text") or "", []
    chunk = _piece(request, text, done=True, tool_calls=calls)
    chunk["done_reason"] = _done_reason(choice.get("finish_reason"))
    chunk.update(_metrics(answer, started))
    return chunk


class StreamTranslator:
    """Server-sent chunks of llama-server, one at a time, to Ollama NDJSON chunks."""

    def __init__(self, request: InferenceRequest, started: float) -> None:
        self.request, self.started = request, started
        self.finish: Any = None
        self.calls: list[dict[str, Any]] = []

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Chunks to send for one SSE event (often one, sometimes none)."""
        out: list[dict[str, Any]] = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            if delta.get("tool_calls"):
                self.calls.extend(delta["tool_calls"])
            if text:
                out.append(_piece(self.request, text, done=False))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        self._last = event
        return out

    def close(self) -> dict[str, Any]:
        """The final ``done: true`` chunk with Ollama's metrics."""
        chunk = _piece(self.request, "", done=True, tool_calls=_tool_calls(self.calls) or None)
        chunk["done_reason"] = _done_reason(self.finish)
        chunk.update(_metrics(getattr(self, "_last", {}), self.started))
        return chunk
