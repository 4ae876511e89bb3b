"""The OpenAI-compatible API, judged by the official ``openai`` client against a real gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from attrs import define, field

from sollol_core.config import PluginSettings, Settings
from sollol_core.errors import BackendError
from sollol_core.gateway import openai_shapes as shapes
from sollol_core.gateway.app import create_app
from sollol_core.gateway.openai import _model_entry
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import Recorder, StaticBackend, node
from sollol_core.types import Decision, Endpoint, InferenceRequest, NodeSnapshot, RequestRecord

HI: list[Any] = [{"role": "user", "content": "Hi"}]

#: What clients send (aiohttp marks a str body text/plain, which the gateway refuses).
JSON_TYPE = {"Content-Type": "application/json"}


@define
class FlakyBackend:
    """Kind ``flaky``: model ``dies`` sends two chunks then fails; ``endless`` never stops."""

    closed: asyncio.Event = field(factory=asyncio.Event)
    finished: asyncio.Event = field(factory=asyncio.Event)
    records: list[RequestRecord] = field(factory=list)

    @hookimpl
    def sollol_on_request_finished(self, record: RequestRecord) -> None:
        self.records.append(record)
        self.finished.set()

    @hookimpl
    def sollol_discover(self) -> Awaitable[Sequence[Endpoint]]:
        async def found() -> Sequence[Endpoint]:
            return [node("f", kind="flaky").endpoint]

        return found()

    @hookimpl
    def sollol_probe(self, endpoint: Endpoint) -> Awaitable[NodeSnapshot] | None:
        if endpoint.kind != "flaky":
            return None

        async def probed() -> NodeSnapshot:
            return node("f", kind="flaky", models=["dies", "endless"])

        return probed()

    @hookimpl
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        if decision.target is None or decision.target.kind != "flaky":
            return None
        return self._answer(request)

    async def _answer(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        try:
            for word in ("one ", "two "):
                yield {"model": request.model, "done": False,
                       "message": {"role": "assistant", "content": word}}
            while request.model == "endless":
                await asyncio.sleep(0.01)
                yield {"model": request.model, "done": False,
                       "message": {"role": "assistant", "content": "more "}}
            raise BackendError("the node died mid-answer")
        finally:
            self.closed.set()


@define
class Gateway:
    url: str
    backend: StaticBackend
    flaky: FlakyBackend
    recorder: Recorder

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    async def post(self, path: str, data: bytes | str, **headers: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.post(
                self.url + path, data=data, headers={**JSON_TYPE, **headers}) as resp:
            return resp.status, await resp.json()

    def last_request(self) -> InferenceRequest:
        return self.backend.executed[-1][1]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A gateway on a loopback port, run as ``sollol serve`` runs it (AppRunner)."""
    backend = StaticBackend([node("a", models=["llama3.2"]),
                             node("b", models=["llama3.2", "all-minilm"], in_flight=1)])
    flaky, recorder = FlakyBackend(), Recorder()
    plugins = Plugins.load(PluginSettings(load=()), extra=[
        ("static", backend), ("flaky", flaky), ("recorder", recorder)])
    runner = web.AppRunner(create_app(Router.create(Settings(), plugins)), access_log=None)
    await runner.setup()  # starts the router through the app's cleanup_ctx
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield Gateway(f"http://{host}:{port}", backend, flaky, recorder)
    finally:
        await runner.cleanup()


async def test_chat_is_answered_in_openai_shape_with_options_in_ollama_names(
        gateway: Gateway) -> None:
    async with gateway.client() as client:
        answer = await client.chat.completions.create(
            model="llama3.2", messages=HI, max_tokens=7, seed=1, stop="x", top_p=0.5,
            response_format={"type": "json_object"}, extra_body={"priority": 8})
    assert answer.choices[0].message.content == "answered by a"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.system_fingerprint == "fp_ollama" and answer.model == "llama3.2"
    assert answer.usage is not None and answer.usage.total_tokens == 0
    sent = gateway.last_request()
    assert sent.priority == 8 and "priority" not in sent.body and sent.body["stream"] is False
    assert sent.body["options"] == {"num_predict": 7, "seed": 1, "stop": ["x"], "top_p": 0.5,
                                    "temperature": 1.0}
    assert sent.body["format"] == "json" and sent.body["messages"] == HI


async def test_streamed_chat_deltas_finish_and_usage(gateway: Gateway) -> None:
    async with gateway.client() as client:
        stream = await client.chat.completions.create(
            model="llama3.2", messages=HI, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in with_choices[1:])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == "answered by a "
    last = with_choices[-1].choices[0]
    assert last.finish_reason == "stop" and last.delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1


async def test_stream_is_sse_ending_with_done(gateway: Gateway) -> None:
    body = json.dumps({"model": "llama3.2", "messages": HI, "stream": True})
    async with aiohttp.ClientSession() as session, session.post(
            f"{gateway.url}/v1/chat/completions", data=body, headers=JSON_TYPE) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Sollol-Backend"] == "static://a:11434"
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])


async def test_completions_plain_and_streamed(gateway: Gateway) -> None:
    async with gateway.client() as client:
        answer = await client.completions.create(model="llama3.2", prompt="Hi", suffix="!")
        stream = await client.completions.create(model="llama3.2", prompt="Hi", stream=True)
        pieces = [chunk async for chunk in stream]
    assert answer.choices[0].text == "answered by a" and answer.id.startswith("cmpl-")
    assert answer.object == "text_completion" and answer.choices[0].finish_reason == "stop"
    assert "".join(p.choices[0].text for p in pieces) == "answered by a "
    assert pieces[-1].choices[0].finish_reason == "stop"
    assert gateway.last_request().body["prompt"] == "Hi"


async def test_embeddings_float_and_base64(gateway: Gateway) -> None:
    async with gateway.client() as client:
        default = await client.embeddings.create(model="all-minilm", input=["a", "b"])
        floats = await client.embeddings.create(model="all-minilm", input="a",
                                                encoding_format="float")
        packed = await client.embeddings.create(model="all-minilm", input="a",
                                                encoding_format="base64")
    assert default.data[0].embedding == [0.0, 1.0]  # the client asked for base64 and decoded it
    assert floats.data[0].embedding == [0.0, 1.0] and floats.object == "list"
    raw = base64.b64decode(packed.data[0].embedding)  # type: ignore[arg-type]
    assert struct.unpack("<2f", raw) == (0.0, 1.0)
    assert gateway.last_request().body["input"] == "a"


async def test_models_list_and_retrieve(gateway: Gateway) -> None:
    async with gateway.client() as client:
        models = [m async for m in client.models.list()]
        one = await client.models.retrieve("llama3.2:latest")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
    assert {m.id for m in models} == {"llama3.2", "all-minilm", "dies", "endless"}
    assert {(m.object, m.owned_by, m.created) for m in models} == {("model", "library", 0)}
    assert one.id == "llama3.2:latest"


async def test_errors_through_the_client(gateway: Gateway) -> None:
    async with gateway.client() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope", messages=HI)
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="llama3.2", messages=[])
        with pytest.raises(openai.BadRequestError) as listed:
            await client.completions.create(model="llama3.2", prompt=["a", "b"])
    assert missing.value.body == {"message": "model 'nope' not found", "type": "not_found_error",
                                  "param": None, "code": None}
    assert empty.value.message.endswith("[] is too short - 'messages'")
    assert "prompt" in listed.value.message


async def test_routing_headers_on_raw_responses(gateway: Gateway) -> None:
    async with gateway.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="llama3.2", messages=HI)
    answer = raw.parse()
    assert raw.headers["X-Sollol-Backend"] == "static://a:11434"
    assert "best of 2" in raw.headers["X-Sollol-Reason"]
    assert answer.id == f"chatcmpl-{raw.headers['X-Sollol-Request-Id']}"


@pytest.mark.parametrize(("path", "data", "headers", "message"), [
    ("/v1/chat/completions", "{not json", {}, "invalid JSON"),
    ("/v1/chat/completions", "", {}, "missing request body"),
    ("/v1/chat/completions", '{"model": "llama3.2", "messages": [], "stream": "yes"}', {},
     "invalid field 'stream'"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}]}', {},
     "model is required"),
    ("/v1/chat/completions", '{"model": "llama3.2", "messages": [{"content": "x"}]}', {},
     "invalid message format"),
    ("/v1/completions", '{"model": "llama3.2", "prompt": "x", "stop": [1]}', {}, "'stop'"),
    ("/v1/completions", '{"model": "llama3.2", "prompt": "x"}', {"X-Sollol-Priority": "11"},
     "priority must be an integer from 1 to 10"),
    ("/v1/embeddings", '{"model": "all-minilm", "input": "x", "encoding_format": "int8"}', {},
     "invalid encoding format"),
    ("/v1/embeddings", '{"model": "all-minilm", "input": [1, 2]}', {}, "invalid input"),
])
async def test_bad_requests_are_400_in_openai_shape(gateway: Gateway, path: str, data: str,
                                                    headers: dict[str, str],
                                                    message: str) -> None:
    status, body = await gateway.post(path, data, **headers)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error" and message in body["error"]["message"]
    assert body["error"]["param"] is None and body["error"]["code"] is None


async def test_priority_header_wins_and_is_not_forwarded(gateway: Gateway) -> None:
    status, _ = await gateway.post("/v1/completions", json.dumps(
        {"model": "llama3.2", "prompt": "x", "priority": 2}), **{"X-Sollol-Priority": "9"})
    assert status == 200
    sent = gateway.last_request()
    assert sent.priority == 9 and "priority" not in sent.body


async def test_failure_mid_stream_ends_with_an_error_event(gateway: Gateway) -> None:
    body = json.dumps({"model": "dies", "messages": HI, "stream": True})
    async with aiohttp.ClientSession() as session, session.post(
            f"{gateway.url}/v1/chat/completions", data=body, headers=JSON_TYPE) as resp:
        assert resp.status == 200
        raw = (await resp.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert "[DONE]" not in events
    contents = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == ["one ", "two "]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "api_error" and "died" in error["message"]
    async with gateway.client() as client:
        stream = await client.chat.completions.create(model="dies", messages=HI, stream=True)
        with pytest.raises(openai.APIError, match="died"):
            [chunk async for chunk in stream]
        with pytest.raises(openai.InternalServerError, match="died"):  # 502 before any byte
            await client.chat.completions.create(model="dies", messages=HI)
    assert [r.ok for r in gateway.recorder.finished] == [False, False, False]


async def test_a_client_that_leaves_mid_stream_stops_the_backend(gateway: Gateway) -> None:
    body = json.dumps({"model": "endless", "messages": HI, "stream": True})
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{gateway.url}/v1/chat/completions", data=body,
                                  headers=JSON_TYPE)
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        resp.close()
    await asyncio.wait_for(gateway.flaky.closed.wait(), 5)
    await asyncio.wait_for(gateway.flaky.finished.wait(), 5)
    [record] = gateway.flaky.records
    assert not record.ok and "went away" in (record.error or "")


async def test_a_client_that_leaves_an_ollama_stream_stops_the_backend_quietly(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"model": "endless", "messages": HI, "stream": True})
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{gateway.url}/api/chat", data=body, headers=JSON_TYPE)
        assert json.loads(await resp.content.readline())["done"] is False
        resp.close()
    await asyncio.wait_for(gateway.flaky.closed.wait(), 5)
    await asyncio.wait_for(gateway.flaky.finished.wait(), 5)
    [record] = gateway.flaky.records
    assert not record.ok
    # aiohttp logs an unhandled handler exception at ERROR: a vanished client is not one
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_chat_body_converts_tools_images_and_tool_results() -> None:
    fields = shapes.ChatFields(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ], tools=[{"type": "function", "function": {"name": "weather"}}], reasoning_effort="none",
        response_format=shapes.ResponseFormat("json_schema", shapes.JsonSchemaFormat({"a": 1})))
    body = shapes.chat_body(fields)
    assert body["messages"] == [
        {"role": "user", "content": "look"},
        {"role": "user", "content": "", "images": ["AAAA"]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather", "tool_call_id": "call_1"},
    ]
    assert body["think"] is False and body["format"] == {"a": 1} and body["tools"]
    with pytest.raises(shapes.InvalidRequest, match="invalid reasoning value"):
        shapes.chat_body(shapes.ChatFields(model="m", messages=HI, reasoning_effort="max"))


def test_stream_converter_tool_calls_and_length() -> None:
    conv = shapes.StreamConverter(kind="chat", id="x", model="m")
    call = {"function": {"name": "f", "arguments": {"a": 1}}}
    events = conv.feed({"message": {"role": "assistant", "content": "", "tool_calls": [call]},
                        "done": True, "done_reason": "stop"})
    delta = events[0]["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["tool_calls"][0]["index"] == 0
    assert delta["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert delta["tool_calls"][0]["id"].startswith("call_")
    assert events[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert conv.close() == []
    cut = shapes.completion_response([{"response": "ab", "done": True, "done_reason": "length",
                                       "prompt_eval_count": 3, "eval_count": 2}], id="c",
                                     model="m")
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_model_entries() -> None:
    entry = _model_entry("alice/tiny:q4", "2025-02-10T08:12:44.123456789-08:00")
    assert entry == {"id": "alice/tiny:q4", "object": "model", "created": 1739203964,
                     "owned_by": "alice"}
    assert _model_entry("llama3.2", "")["owned_by"] == "library"
