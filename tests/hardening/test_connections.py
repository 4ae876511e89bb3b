"""Connections and shutdown through a real ``sollol serve``: clients that never finish their
header or sit idle are closed, a flood of them cannot lock valid clients out under a small
open-file limit, and a signal stops the gateway in bounded time (a second one at once)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp
import psutil
import pytest
from sollol_ollama.testing import OllamaEmulator

HI = [{"role": "user", "content": "hi"}]
#: The start of a request whose header never ends.
UNFINISHED_HEADER = b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"
GATEWAY_FILES = 1024


def limit_open_files() -> None:
    """In the gateway's process: at most 1,024 open files, soft and hard."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (GATEWAY_FILES, GATEWAY_FILES))


def open_unfinished(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each send the start of a header and nothing more."""
    opened = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            continue  # the gateway may refuse or drop some: they are the attackers
        opened.append(sock)
        with contextlib.suppress(OSError):
            sock.sendall(UNFINISHED_HEADER)
    return opened


@contextlib.contextmanager
def open_file_limit_raised(needed: int) -> Any:
    """This test process's soft open-file limit raised to its hard limit (it holds the flood's
    sockets); skips unless that allows ``needed`` files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def chat(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.post(f"{url}/api/chat",
                            json={"model": "llama3.2", "messages": HI, "stream": False},
                            timeout=aiohttp.ClientTimeout(total=20)) as response:
        return response.status, await response.json()


async def test_a_flood_of_unfinished_headers_does_not_lock_out_valid_requests(
        serve: Any) -> None:
    with open_file_limit_raised(3000):
        async with OllamaEmulator(name="flooded") as node:
            gateway = await serve([node.address], preexec_fn=limit_open_files)
            flood = await asyncio.to_thread(open_unfinished, gateway.port, 1100)
            # more of them keep coming while valid clients ask, each on a new connection
            churn = asyncio.ensure_future(asyncio.to_thread(open_unfinished, gateway.port, 400))
            try:
                async with aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(force_close=True)) as session:
                    answers = [await chat(session, gateway.url) for _ in range(20)]
            finally:
                flood += await churn
                for sock in flood:
                    sock.close()
            assert all(status == 200 and body["done"] for status, body in answers), answers
            assert len(node.requests) == 20
            assert gateway.process.poll() is None


async def read_to_end(reader: asyncio.StreamReader, within_s: float) -> bytes | None:
    """What the server sends until it closes the connection; None if it is still open after
    ``within_s``."""
    try:
        return await asyncio.wait_for(reader.read(), within_s)
    except ConnectionResetError:  # closed with what the client sent unread
        return b""
    except TimeoutError:
        return None


async def test_an_unfinished_header_and_an_idle_connection_are_closed(serve: Any) -> None:
    async with OllamaEmulator(name="node") as node:
        gateway = await serve([node.address], SOLLOL_HEADER_TIMEOUT="1",
                              SOLLOL_KEEPALIVE_TIMEOUT="5")
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        slow_writer.write(UNFINISHED_HEADER)
        # closed by the 1 s header timeout, not the 5 s keep-alive timeout, with a reason
        answer = await read_to_end(slow_reader, within_s=4)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answer
        assert not silent_reader.at_eof()  # the connection that sent nothing is not timed so
        # ... but it is once the keep-alive timeout has passed
        assert await read_to_end(silent_reader, within_s=10) == b""

        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        answered = time.monotonic()
        assert head.startswith(b"HTTP/1.1 200 ")
        # kept alive past the header timeout, closed after the keep-alive timeout
        await read_to_end(reader, within_s=15)
        assert reader.at_eof()
        assert 2.5 < time.monotonic() - answered < 15
        for each in (silent_writer, slow_writer, writer):
            each.close()


async def start_stream(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """A streamed chat that has begun (its first line read) and goes on for minutes."""
    response = await session.post(f"{url}/api/chat",
                                  json={"model": "llama3.2", "messages": HI, "stream": True})
    assert response.status == 200
    assert await asyncio.wait_for(response.content.readline(), 10)
    return response


async def read_rest(response: aiohttp.ClientResponse) -> None:
    """Read ``response`` until it ends, cleanly or cut."""
    with contextlib.suppress(aiohttp.ClientError):
        async for _ in response.content:
            pass


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def wait_exit(process: subprocess.Popen[str], timeout: float) -> int | None:
    """``process``'s exit status, or None if it still runs after ``timeout`` seconds."""
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        return None


async def kept_alive_after_one_request(port: int) -> asyncio.StreamReader:
    """A connection that asked for ``/health``, read the answer and is now idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 ")
    await asyncio.sleep(0.3)  # the gateway is done with it
    return reader


async def test_past_the_connection_limit_idle_connections_make_room(serve: Any) -> None:
    async with OllamaEmulator(name="slow", tokens_per_s=2, reply_words=400, parallel=2) as node:
        gateway = await serve([node.address], SOLLOL_MAX_CONNECTIONS="2",
                              SOLLOL_OLLAMA_PARALLEL="2")
        async with aiohttp.ClientSession() as first, aiohttp.ClientSession() as second:
            streaming = await start_stream(first, gateway.url)
            idle = await kept_alive_after_one_request(gateway.port)
            # a third connection: the idle one is closed for it
            other = await start_stream(second, gateway.url)
            assert await read_to_end(idle, within_s=5) is not None
            # both run requests: a fourth connection is closed at once, and they go on
            refused_reader, refused_writer = await asyncio.open_connection(
                "127.0.0.1", gateway.port)
            refused_writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert await read_to_end(refused_reader, within_s=5) == b""
            for response in (streaming, other):
                assert await asyncio.wait_for(response.content.readline(), 10)
                response.close()
            refused_writer.close()


async def test_a_second_signal_stops_the_gateway_while_a_stream_runs(serve: Any) -> None:
    async with OllamaEmulator(name="slow", tokens_per_s=2, reply_words=400) as node:
        gateway = await serve([node.address])
        async with aiohttp.ClientSession() as session:
            response = await start_stream(session, gateway.url)
            gateway.process.send_signal(signal.SIGTERM)
            # it stops listening and waits for the running stream (up to 30 s)
            assert await wait_exit(gateway.process, timeout=2) is None
            assert refused(gateway.port)
            gateway.process.send_signal(signal.SIGTERM)
            assert await wait_exit(gateway.process, timeout=5) == 128 + signal.SIGTERM
            assert gateway.stderr().count("second signal: stopping now") == 1
            response.close()


async def test_one_signal_ends_a_running_stream_after_the_shutdown_timeout(serve: Any) -> None:
    async with OllamaEmulator(name="slow", tokens_per_s=2, reply_words=400) as node:
        gateway = await serve([node.address], SOLLOL_SHUTDOWN_TIMEOUT="2")
        async with aiohttp.ClientSession() as session:
            response = await start_stream(session, gateway.url)
            signalled = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            assert await wait_exit(gateway.process, timeout=15) == 0
            assert time.monotonic() - signalled > 1.5  # the stream had its 2 s
            await asyncio.wait_for(read_rest(response), 10)  # the stream was cut, not left open
            response.close()
            assert "second signal" not in gateway.stderr()


STOPS_NOW = """
import signal, subprocess, sys
from sollol_core.listening import stop_now
grandchild = "import subprocess, time; p = subprocess.Popen(['sleep', '120']); " \\
    "print(p.pid, flush=True); time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", grandchild], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
stop_now(signal.SIGINT)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stopping_now_kills_every_process_started_and_exits_130_on_sigint() -> None:
    done = subprocess.run([sys.executable, "-c", STOPS_NOW], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "second signal: stopping now"
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2 and all(gone(pid) for pid in pids), done.stdout
