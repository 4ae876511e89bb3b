"""Whole replies, Ollama's and OpenAI's, both ways: finish reasons, token counts, chat,
completion and embedding answers.

``encode_*`` turns the Ollama chunks of a reply into the OpenAI answer a client gets (as Ollama's
own OpenAI layer writes it); ``decode_*`` turns an OpenAI answer into the Ollama chunk a backend
speaking OpenAI stands for. Streams are in :mod:`sollol_core.codec.streams`.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sollol_core.codec.base import Chunk, now_rfc3339
from sollol_core.codec.messages import decode_reply_tool_calls, encode_reply_tool_calls

Kind = Literal["chat", "completion"]

FINGERPRINT = "fp_ollama"
#: Ollama ``done_reason`` -> OpenAI ``finish_reason``; anything else (``load``...) is ``stop``,
#: and a reply that called tools finishes with ``tool_calls``.
FINISH_REASONS = {"stop": "stop", "length": "length"}
#: OpenAI ``finish_reason`` -> Ollama ``done_reason``; anything else (``tool_calls``,
#: ``content_filter``) is ``stop``, as Ollama says when a model called tools.
DONE_REASONS = {finish: done for done, finish in FINISH_REASONS.items()}


# -- finish reasons and counts -----------------------------------------------------------------


def encode_finish(final: Chunk | None, tool_calls: bool) -> str:
    """OpenAI's ``finish_reason`` for the last Ollama chunk."""
    if tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(str((final or {}).get("done_reason")), "stop")


def decode_finish(finish_reason: Any) -> str:
    """Ollama's ``done_reason`` for OpenAI's ``finish_reason``."""
    return DONE_REASONS.get(finish_reason, "stop")


def encode_usage(final: Chunk | None) -> dict[str, int]:
    """OpenAI's ``usage`` for the counts of the last Ollama chunk."""
    prompt = int((final or {}).get("prompt_eval_count") or 0)
    completion = int((final or {}).get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def decode_usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Ollama's counts for OpenAI's ``usage`` (the counts it gives)."""
    counts = {}
    for field, count in (("prompt_tokens", "prompt_eval_count"),
                         ("completion_tokens", "eval_count")):
        value = usage.get(field) if usage else None
        if value is not None:
            counts[count] = int(value)
    return counts


# -- Ollama -> OpenAI --------------------------------------------------------------------------


def text_of(chunk: Chunk, kind: Kind) -> tuple[str, str, list[Any]]:
    """Content, thinking and tool calls of one Ollama chunk."""
    if kind == "chat":
        message = chunk.get("message") or {}
        return (message.get("content") or "", message.get("thinking") or "",
                list(message.get("tool_calls") or ()))
    return chunk.get("response") or "", chunk.get("thinking") or "", []


def model_of(final: Chunk | None, model: str) -> str:
    """The model a chunk names, else ``model``."""
    name = (final or {}).get("model")
    return name if isinstance(name, str) and name else model


def encode_chat_reply(chunks: Sequence[Chunk], *, id: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` from every chunk of a chat (streamed or not)."""
    parts = [text_of(chunk, "chat") for chunk in chunks]
    calls = [call for _, _, tools in parts for call in tools]
    logprobs = [entry for chunk in chunks for entry in chunk.get("logprobs") or ()]
    final = chunks[-1] if chunks else None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(p[0] for p in parts)}
    if any(p[1] for p in parts):
        message["reasoning"] = "".join(p[1] for p in parts)
    if calls:
        message["tool_calls"] = encode_reply_tool_calls(calls)
    choice: dict[str, Any] = {"index": 0, "message": message,
                              "finish_reason": encode_finish(final, bool(calls))}
    if logprobs:
        choice["logprobs"] = {"content": logprobs}
    return {"id": id, "object": "chat.completion", "created": int(time.time()),
            "model": model_of(final, model), "system_fingerprint": FINGERPRINT,
            "choices": [choice], "usage": encode_usage(final)}


def encode_completion_reply(chunks: Sequence[Chunk], *, id: str, model: str) -> dict[str, Any]:
    """A ``text_completion`` from every chunk of a generate request."""
    final = chunks[-1] if chunks else None
    text = "".join(text_of(chunk, "completion")[0] for chunk in chunks)
    return {"id": id, "object": "text_completion", "created": int(time.time()),
            "model": model_of(final, model), "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": None,
                         "finish_reason": encode_finish(final, False)}],
            "usage": encode_usage(final)}


def encode_embed_reply(chunks: Sequence[Chunk], *, model: str,
                       encoding_format: str | None) -> dict[str, Any]:
    """OpenAI's embedding list; ``base64`` packs each vector as little-endian float32."""
    vectors = [v for chunk in chunks for v in chunk.get("embeddings") or ()]
    tokens = sum(int(chunk.get("prompt_eval_count") or 0) for chunk in chunks)
    data = [{"object": "embedding", "index": i,
             "embedding": _base64(v) if encoding_format == "base64" else v}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# -- OpenAI -> Ollama --------------------------------------------------------------------------


def decode_reply(answer: Mapping[str, Any], *, model: str, chat: bool) -> dict[str, Any]:
    """The final (``done``) Ollama chunk for a whole chat or completion answer, with the counts
    its ``usage`` gives; ``chat`` picks the shape (``message`` or ``response``)."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message")
    if message is not None:
        text = message.get("content") or ""
        thinking = message.get("reasoning_content") or message.get("reasoning") or ""
        calls = decode_reply_tool_calls(message.get("tool_calls"))
    else:
        text, thinking, calls = choice.get("text") or "", "", []
    chunk = piece(model, chat, text, thinking, done=True)
    if calls and chat:
        chunk["message"]["tool_calls"] = calls
    chunk["done_reason"] = decode_finish(choice.get("finish_reason"))
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and logprobs.get("content"):
        chunk["logprobs"] = list(logprobs["content"])
    chunk.update(decode_usage(answer.get("usage")))
    return chunk


def piece(model: str, chat: bool, text: str, thinking: str | None, *,
          done: bool) -> dict[str, Any]:
    """One Ollama chunk of a chat (``message``) or generate (``response``) reply."""
    chunk: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        chunk["message"] = message
    else:
        chunk["response"] = text
        if thinking:
            chunk["thinking"] = thinking
    chunk["done"] = done
    return chunk


def decode_embed_reply(answer: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's ``embeddings`` and ``prompt_eval_count`` for OpenAI's embedding list (base64
    vectors unpacked)."""
    vectors = [_vector(d.get("embedding", [])) for d in answer.get("data") or []]
    usage = answer.get("usage") or {}
    return {"embeddings": vectors, "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}


def _vector(embedding: Any) -> Any:
    if not isinstance(embedding, str):
        return embedding
    raw = base64.b64decode(embedding)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
