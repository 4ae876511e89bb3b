"""Talking to llama-server over HTTP: what its HTTP layer does that a client must live with."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from sollol_llamacpp import server_http

from sollol_core.types import InferenceRequest

EVENTS = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
          {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
           "timings": {"prompt_n": 3, "prompt_ms": 1.0, "predicted_n": 1, "predicted_ms": 1.0}}]


async def test_a_connection_closed_before_the_request_is_written_is_tried_again() -> None:
    """llama-server says keep-alive after a streamed answer, then closes the connection: a
    request sent on it never reaches the server, so it is sent again on a new connection (not
    failed over to another node, which would lose the prompt cache)."""
    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == 1:  # closed under the request
            writer.transport.abort()
            return
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in EVENTS)
        body += b"data: [DONE]\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = InferenceRequest.chat("m", [{"role": "user", "content": "x" * 200_000}])
    try:
        async with aiohttp.ClientSession() as session:
            chunks = [c async for c in server_http.run(session, f"http://127.0.0.1:{port}",
                                                       request, "node")]
    finally:
        server.close()
        await server.wait_closed()
    assert accepted == 2
    assert "".join(c["message"]["content"] for c in chunks) == "Hi"
    assert chunks[-1]["done"] is True and chunks[-1]["prompt_eval_count"] == 3
