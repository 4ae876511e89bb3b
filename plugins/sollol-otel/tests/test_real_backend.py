"""A real HTTP backend (the Ollama emulator) receives the client span as its traceparent."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry.trace import SpanKind
from sollol_ollama.testing import OllamaEmulator

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.router import Router

from .conftest import Telemetry, isolated


class HeaderRecordingEmulator(OllamaEmulator):
    """The emulator, keeping the ``traceparent`` header of every inference request it serves
    (observed at its aiohttp handler; the emulator itself records bodies only)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.traceparents: list[str | None] = []

    async def _inference(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.traceparents.append(request.headers.get("traceparent"))
        return await super()._inference(request, body)


async def test_the_ollama_node_receives_the_client_span_as_traceparent(
        aiohttp_client: Any, telemetry: Telemetry) -> None:
    async with HeaderRecordingEmulator(name="gpu-a") as emulator:
        settings = Settings.load(environ={"OLLAMA_NODES": emulator.address,
                                          "SOLLOL_LOAD_PLUGINS": "ollama"})
        router = Router.create(settings, isolated(("otel", telemetry.plugin), load=("ollama",)))
        client = await aiohttp_client(create_app(router))
        response = await client.post("/api/chat", json={
            "model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
            "stream": True})
        assert response.status == 200
        body = await response.text()
        assert "gpu-a" in body
        await client.close()

    (server,) = telemetry.of_kind(SpanKind.SERVER)
    (upstream,) = telemetry.of_kind(SpanKind.CLIENT)
    (received,) = emulator.traceparents
    assert received is not None
    version, trace_id, span_id, flags = received.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == server.context.trace_id == upstream.context.trace_id
    assert int(span_id, 16) == upstream.context.span_id

    attributes = dict(upstream.attributes or {})
    host, port = emulator.address.rsplit(":", 1)
    assert upstream.name == "chat llama3.2"
    assert (attributes["gen_ai.provider.name"], attributes["server.address"],
            attributes["server.port"]) == ("ollama", host, int(port))
    # Token counts come from the node's last chunk.
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    tokens = {p.attributes["gen_ai.token.type"]: p.sum
              for p in telemetry.points("gen_ai.client.token.usage")}
    assert tokens == {"input": attributes["gen_ai.usage.input_tokens"],
                      "output": attributes["gen_ai.usage.output_tokens"]}
