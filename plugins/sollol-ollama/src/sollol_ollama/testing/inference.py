"""The inference endpoints of the emulator: generate, chat, embed and the legacy embeddings."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .cost import CostModel, SlotCache, chat_tokens, prompt_tokens
from .models import EmulatedModel, display_name, full_name, normalised, now_utc, parse_name
from .models import raw_vector as _raw_vector
from .protocol import (
    BUSY,
    FAILURE_MESSAGE,
    ApiError,
    FailureKind,
    check_options,
    drop_connection,
    int_option,
    json_reply,
    keep_alive_seconds,
    ndjson,
)

_THINK_LEVELS = ("low", "medium", "high", "max")


class InferenceMixin:
    """State and handlers for the inference routes; :class:`OllamaEmulator` adds the server."""

    name: str
    models: tuple[EmulatedModel, ...]
    loaded: set[str]
    tokens_per_s: float
    latency_s: float
    max_queue: int
    reply_words: int
    requests: list[tuple[str, dict[str, Any]]]
    _failures: deque[FailureKind]
    _slots: asyncio.Semaphore
    _pending: int
    _in_flight: int
    _max_in_flight: int
    _expires: dict[str, float]
    _context: dict[str, int]
    cost: CostModel | None
    _slot_cache: SlotCache

    # -- model bookkeeping -------------------------------------------------------------------
    def _lookup(self, name: str, not_found: str) -> EmulatedModel:
        if parse_name(name) is None:
            raise ApiError(400, "invalid model name")
        key = display_name(name).lower()
        for model in self.models:
            if model.name.lower() == key:
                return model
        raise ApiError(404, not_found)

    def _prune(self) -> None:
        now = time.time()
        for name in list(self.loaded):
            if self._expires.setdefault(name, now + 300.0) <= now:
                self.loaded.discard(name)
                self._expires.pop(name, None)

    def _load(self, model: EmulatedModel, body: dict[str, Any]) -> int:
        """Mark ``model`` loaded for the request's keep-alive; the load duration in ns."""
        self._prune()
        was_loaded = model.name in self.loaded
        self.loaded.add(model.name)
        keep = keep_alive_seconds(body.get("keep_alive"))
        self._expires[model.name] = time.time() + keep
        num_ctx = int_option(body.get("options") or {}, "num_ctx")
        if num_ctx is not None or not was_loaded:
            self._context[model.name] = num_ctx or min(4096, model.context_length)
        return 250_000 if was_loaded else 25_000_000

    def _release(self, model: EmulatedModel, body: dict[str, Any]) -> None:
        if keep_alive_seconds(body.get("keep_alive")) == 0:
            self.loaded.discard(model.name)
            self._expires.pop(model.name, None)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        slots = self._slots
        if slots.locked():
            if self._pending >= self.max_queue:
                raise ApiError(503, BUSY)
            self._pending += 1
            try:
                await slots.acquire()
            finally:
                self._pending -= 1
        else:
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    async def _pace(self) -> None:
        if self.tokens_per_s > 0:
            await asyncio.sleep(1.0 / self.tokens_per_s)

    # -- entry point -------------------------------------------------------------------------
    async def _inference(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        path = request.path
        self.requests.append((path, body))
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            failure = self._failures.popleft() if self._failures else None
            if failure == "refuse":
                drop_connection(request)
                return web.Response()
            if failure == "error500":
                raise ApiError(500, FAILURE_MESSAGE)
            if failure == "hang":
                await asyncio.get_running_loop().create_future()
            if path == "/api/generate":
                return await self._generate(request, body, failure)
            if path == "/api/chat":
                return await self._chat(request, body, failure)
            if path == "/api/embed":
                return await self._embed(request, body, failure)
            return await self._embeddings(request, body, failure)
        finally:
            self._in_flight -= 1

    # -- generate / chat ---------------------------------------------------------------------
    def _check_common(self, body: dict[str, Any], model: EmulatedModel, name: str) -> bool:
        """Options, logprobs and think checks; whether thinking output is on."""
        check_options(body.get("options") or {})
        top = body.get("top_logprobs")
        if top is not None and not 0 <= top <= 20:
            raise ApiError(400, "top_logprobs must be between 0 and 20")
        think = body.get("think")
        if isinstance(think, str) and think not in _THINK_LEVELS:
            raise ApiError(400, f'invalid think value: "{think}" (must be "low", "medium", '
                                '"high", "max", true, or false)')
        if think not in (None, False) and "thinking" not in model.capabilities:
            raise ApiError(400, f'"{name}" does not support thinking')
        return "thinking" in model.capabilities and think is not False

    def _load_form(self, name: str, chat: bool, reason: str) -> web.Response:
        reply: dict[str, Any] = {"model": name, "created_at": now_utc()}
        if chat:
            reply["message"] = {"role": "assistant", "content": ""}
        else:
            reply["response"] = ""
        reply.update(done=True, done_reason=reason)
        return json_reply(reply)

    async def _generate(self, request: web.Request, body: dict[str, Any],
                        failure: FailureKind | None) -> web.StreamResponse:
        name = body.get("model") or ""
        if not name:
            raise ApiError(404, "model '' not found")
        model = self._lookup(name, f"model '{name}' not found")
        if not body.get("prompt") and keep_alive_seconds(body.get("keep_alive")) == 0:
            self._release(model, body)
            return self._load_form(name, False, "unload")
        if "completion" not in model.capabilities:
            raise ApiError(400, f'"{name}" does not support generate')
        if body.get("suffix") and "insert" not in model.capabilities:
            raise ApiError(400, f'"{name}" does not support insert')
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        thinking = self._check_common(body, model, name)
        if not body.get("prompt"):
            self._load(model, body)
            return self._load_form(name, False, "load")
        tokens = prompt_tokens(body.get("system"), str(body["prompt"]))
        return await self._produce(request, body, model, failure, False, thinking, tokens,
                                   len(tokens))

    async def _chat(self, request: web.Request, body: dict[str, Any],
                    failure: FailureKind | None) -> web.StreamResponse:
        name = body.get("model") or ""
        if not name:
            raise ApiError(400, "model is required")
        model = self._lookup(name, f"model '{name}' not found")
        messages = body.get("messages") or []
        if not messages and keep_alive_seconds(body.get("keep_alive")) == 0:
            self._release(model, body)
            return self._load_form(name, True, "unload")
        if "completion" not in model.capabilities:
            raise ApiError(400, f'"{name}" does not support chat')
        if body.get("tools") and "tools" not in model.capabilities:
            raise ApiError(400, f"{full_name(name)} does not support tools")
        thinking = self._check_common(body, model, name)
        if not messages:
            self._load(model, body)
            return self._load_form(name, True, "load")
        prompt_words = sum(len(str(m.get("content") or "").split()) for m in messages)
        return await self._produce(request, body, model, failure, True, thinking,
                                   chat_tokens(messages), prompt_words)

    def _tool_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Call the first tool unless the conversation already ends with a tool result."""
        tools = body.get("tools") or []
        messages = body.get("messages") or []
        if not tools or (messages and messages[-1].get("role") == "tool"):
            return None
        function = tools[0].get("function") or {}
        schema = function.get("parameters") or {}
        properties = schema.get("properties") or {}
        samples = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
        arguments = {key: samples.get(str((spec or {}).get("type")), self.name)
                     for key, spec in properties.items() if key in (schema.get("required") or [])}
        seed = json.dumps([self.name, len(self.requests), function.get("name")])
        return {"id": "call_" + hashlib.sha256(seed.encode()).hexdigest()[:8],
                "function": {"index": 0, "name": function.get("name", ""),
                             "arguments": arguments}}

    def _pieces(self, body: dict[str, Any], thinking: bool) -> tuple[list[tuple[str, str]], str]:
        """The (field, text) chunks to send and the done_reason."""
        length = self.cost.output_tokens if self.cost is not None else self.reply_words
        words = [self.name] + [f" word{i}" for i in range(1, length)]
        words = words[:max(length, 0)]
        reason = "stop"
        limit = int_option(body.get("options") or {}, "num_predict")
        if limit is not None and 0 <= limit < len(words):
            words, reason = words[:limit], "length"
        pieces = [("thinking", t) for t in (self.name, " is", " thinking.")] if thinking else []
        return pieces + [("content", w) for w in words], reason

    def _chunk(self, name: str, chat: bool, field: str, text: str) -> dict[str, Any]:
        chunk: dict[str, Any] = {"model": name, "created_at": now_utc()}
        content = text if field == "content" else ""
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if field == "thinking":
                message["thinking"] = text
            chunk["message"] = message
        else:
            chunk["response"] = content
            if field == "thinking":
                chunk["thinking"] = text
        chunk["done"] = False
        return chunk

    async def _produce(self, request: web.Request, body: dict[str, Any], model: EmulatedModel,
                       failure: FailureKind | None, chat: bool, thinking: bool,
                       tokens: tuple[str, ...], prompt_words: int) -> web.StreamResponse:
        name: str = body["model"]
        stream = body.get("stream") is not False
        pieces, reason = self._pieces(body, thinking)
        tool_call = self._tool_call(body) if chat else None
        if tool_call is not None:
            pieces = [p for p in pieces if p[0] == "thinking"]
        cut = max(1, len(pieces) // 2) if failure in (
            "die_midstream", "error_midstream", "stall_midstream") else -1
        cost = self.cost
        arrived = time.perf_counter()
        async with self._slot():
            started = time.perf_counter()
            slot, cached = (self._slot_cache.take(tokens, reuse=cost.prompt_cache)
                            if cost is not None else (None, 0))
            sent: list[tuple[str, str]] = []
            load_ns = self._load(model, body)
            try:
                if self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                if cost is not None:  # prefill: only what the slot does not hold yet
                    await asyncio.sleep((len(tokens) - cached) / cost.prefill_tokens_per_s)
                prompt_ns = max(1, int((time.perf_counter() - started) * 1e9))
                response: web.StreamResponse | None = None
                if stream:
                    response = web.StreamResponse()
                    response.content_type = "application/x-ndjson"
                    await response.prepare(request)
                for index, piece in enumerate(pieces):
                    if index == cut:
                        return await self._fail_midstream(request, response, failure, name)
                    await self._pace()
                    if response is not None:
                        await response.write(ndjson(self._chunk(name, chat, *piece)))
                    sent.append(piece)
                if cut >= 0:
                    return await self._fail_midstream(request, response, failure, name)
                if tool_call is not None and response is not None:
                    chunk = self._chunk(name, chat, "content", "")
                    chunk["message"]["tool_calls"] = [tool_call]
                    await response.write(ndjson(chunk))
                eval_ns = max(1, int((time.perf_counter() - started) * 1e9) - prompt_ns)
            finally:
                self._release(model, body)
                if slot is not None:  # the slot keeps the prompt and the reply, as a KV cache
                    reply = "".join(t for f, t in sent if f == "content").split()
                    self._slot_cache.give_back(slot, (*tokens, *reply))
        eval_count = len(sent) + (tool_call is not None)
        # what was evaluated (a cached prefix is not); a real node's total includes its queue
        prompt_count = len(tokens) - cached if cost is not None else max(1, prompt_words)
        wait_ns = int((started - arrived) * 1e9) if cost is not None else 0
        final: dict[str, Any] = {"model": name, "created_at": now_utc()}
        text = "".join(t for f, t in sent if f == "content")
        thought = "".join(t for f, t in sent if f == "thinking")
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": "" if stream else text}
            if thought and not stream:
                message["thinking"] = thought
            if tool_call is not None and not stream:
                message["tool_calls"] = [tool_call]
            final["message"] = message
        else:
            final["response"] = "" if stream else text
            if thought and not stream:
                final["thinking"] = thought
        final.update(done=True, done_reason=reason)
        if not chat and not body.get("raw"):
            final["context"] = [1000 + i for i in range(prompt_count + eval_count)]
        final.update(
            total_duration=wait_ns + load_ns + prompt_ns + eval_ns, load_duration=load_ns,
            prompt_eval_count=prompt_count, prompt_eval_duration=prompt_ns,
            eval_count=eval_count, eval_duration=eval_ns)
        if response is None:
            return json_reply(final)
        await response.write(ndjson(final))
        await response.write_eof()
        return response

    async def _fail_midstream(self, request: web.Request, response: web.StreamResponse | None,
                              failure: FailureKind | None, name: str) -> web.StreamResponse:
        if failure == "stall_midstream":  # a node that hangs mid-generation
            await asyncio.get_running_loop().create_future()
        if failure == "error_midstream":
            if response is None:
                raise ApiError(500, FAILURE_MESSAGE)
            await response.write(ndjson({"error": FAILURE_MESSAGE}))
            await response.write_eof()
            return response
        if response is None:
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(f'{{"model":{json.dumps(name)},"created_at":"'.encode())
        drop_connection(request)
        return response

    # -- embeddings --------------------------------------------------------------------------
    async def _embed(self, request: web.Request, body: dict[str, Any],
                     failure: FailureKind | None) -> web.StreamResponse:
        name = body.get("model") or ""
        if not name:
            raise ApiError(404, "model '' not found")
        model = self._lookup(name, f'model "{name}" not found, try pulling it first')
        raw = body.get("input")
        if raw is None or raw == "":
            texts: list[str] = []
        elif isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        else:
            raise ApiError(400, "invalid input type")
        check_options(body.get("options") or {})
        if not texts:
            self._load(model, body)
            self._release(model, body)
            return json_reply({"model": name, "embeddings": []})
        counts = [max(1, len(t.split())) for t in texts]
        if body.get("truncate") is False and max(counts) > model.context_length:
            raise ApiError(400, "the input length exceeds the context length")
        dimensions = body.get("dimensions")
        if dimensions is not None and not 0 <= dimensions <= model.embedding_length:
            raise ApiError(400, f"dimensions must be between 0 and {model.embedding_length}")
        vectors, load_ns, total_ns = await self._vectors(request, model, body, texts, failure)
        if dimensions:
            vectors = [v[:dimensions] for v in vectors]
        return json_reply({
            "model": name, "embeddings": [normalised(v) for v in vectors],
            "total_duration": total_ns, "load_duration": load_ns,
            "prompt_eval_count": sum(counts)})

    async def _embeddings(self, request: web.Request, body: dict[str, Any],
                          failure: FailureKind | None) -> web.StreamResponse:
        name = body.get("model") or ""
        if not name:
            raise ApiError(400, "model is required")
        model = self._lookup(name, f'model "{name}" not found, try pulling it first')
        check_options(body.get("options") or {})
        prompt = body.get("prompt") or ""
        if not prompt:
            self._load(model, body)
            self._release(model, body)
            return json_reply({"embedding": []})
        vectors, _, _ = await self._vectors(request, model, body, [prompt], failure)
        return json_reply({"embedding": vectors[0]})

    async def _vectors(self, request: web.Request, model: EmulatedModel, body: dict[str, Any],
                       texts: list[str], failure: FailureKind | None,
                       ) -> tuple[list[list[float]], int, int]:
        async with self._slot():
            started = time.perf_counter()
            load_ns = self._load(model, body)
            try:
                if self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                if failure == "error_midstream":
                    raise ApiError(500, FAILURE_MESSAGE)
                if failure == "die_midstream":
                    response = web.StreamResponse()
                    response.content_type = "application/json"
                    await response.prepare(request)
                    await response.write(b'{"model":')
                    drop_connection(request)
                    raise ConnectionResetError("emulated connection drop")
                vectors = [_raw_vector(t, model.embedding_length) for t in texts]
            finally:
                self._release(model, body)
        total_ns = load_ns + max(1, int((time.perf_counter() - started) * 1e9))
        return vectors, load_ns, total_ns
