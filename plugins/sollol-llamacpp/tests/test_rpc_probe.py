"""The native RPC probe against real ``rpc-server`` workers (and a real ``llama-server``
coordinator) on loopback, plus fake peers that are not llama.cpp at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.rpc_probe import RpcStatus, probe_rpc, snapshot_from

from sollol_core.types import Endpoint, Health, Role

HOST = "127.0.0.1"
HELLO_V7 = bytes([14]) + struct.pack("<Q", 24) + bytes(24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


Process = asyncio.subprocess.Process


async def _spawn(argv: list[str], log_path: Path) -> Process:
    with log_path.open("wb") as log:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)


async def _stop(process: Process) -> None:
    """SIGTERM, SIGKILL after 5 s; always reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    await process.wait()


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    """Every process a test starts; all stopped and reaped at teardown."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            await _stop(process)


async def _wait_probe(port: int, want: str, timeout_s: float = 15.0) -> RpcStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await probe_rpc(HOST, port, timeout_s=0.5)
        if status.state == want or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


StartWorker = Callable[[], Awaitable[int]]


@pytest.fixture
def start_worker(binaries: Binaries, processes: list[Process], tmp_path: Path) -> StartWorker:
    """Starts a real rpc-server on a free loopback port, ready to serve; returns the port."""
    binary = binaries.rpc_server

    async def start() -> int:
        port = free_port()
        processes.append(await _spawn([str(binary), "-H", HOST, "-p", str(port)],
                                      tmp_path / f"rpc-{port}.log"))
        status = await _wait_probe(port, "ok")
        assert status.state == "ok", f"rpc-server did not come up: {status.detail}"
        return port

    return start


@contextlib.asynccontextmanager
async def fake_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]]) -> AsyncIterator[int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, HOST, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- real rpc-server -------------------------------------------------------------------------


async def test_real_worker_reports_version_and_memory(start_worker: StartWorker) -> None:
    port = await start_worker()
    status = await probe_rpc(HOST, port)
    assert status.state == "ok", status.detail
    assert status.version == (7, 0, 0)
    assert len(status.devices) >= 1
    for device in status.devices:
        assert device.total_bytes > 0
        assert 0 < device.free_bytes <= device.total_bytes
    assert status.devices[0].name == "device 0"
    assert status.latency_ms is not None and status.latency_ms > 0

    snap = snapshot_from(Endpoint("llamacpp-rpc", HOST, port), status)
    assert snap.health is Health.UP and snap.role is Role.WORKER
    assert snap.version == "rpc 7.0.0"
    assert snap.devices == status.devices and snap.total_bytes > 0
    assert snap.latency_ms == status.latency_ms and snap.detail == status.detail


async def test_real_worker_survives_many_probes(start_worker: StartWorker) -> None:
    port = await start_worker()
    results = [await probe_rpc(HOST, port) for _ in range(20)]
    assert {r.state for r in results} == {"ok"}


async def test_worker_held_by_a_client_is_busy_and_survives_the_probes(
        start_worker: StartWorker, processes: list[Process]) -> None:
    """A client that finished HELLO holds the worker (as a coordinator does). Probes then see
    "busy"; once it lets go the worker must still be alive: a probe closing with a FIN would
    have it die of SIGPIPE when it later answers the queued HELLO."""
    port = await start_worker()
    reader, holder = await asyncio.open_connection(HOST, port)
    try:
        holder.write(HELLO_V7)
        assert await asyncio.wait_for(reader.readexactly(8 + 28), 2)
        first = await probe_rpc(HOST, port, timeout_s=0.3)
        assert first.state == "busy", first.detail
        assert first.version is None and first.devices == () and first.latency_ms is None
        assert snapshot_from(Endpoint("llamacpp-rpc", HOST, port), first).health is Health.BUSY
        # rpc-server listens with a backlog of 1: the kernel queues two abandoned connections,
        # then drops SYNs, and a connect timeout is all a probe can see.
        states = [(await probe_rpc(HOST, port, timeout_s=0.3)).state for _ in range(2)]
        assert states[0] == "busy"
        assert states[1] in ("busy", "unreachable")
    finally:
        holder.close()
        await holder.wait_closed()
    status = await _wait_probe(port, "ok", timeout_s=5)
    assert status.state == "ok", status.detail
    assert processes[-1].returncode is None, "the worker died after being probed while held"


async def test_worker_held_by_a_real_coordinator_is_busy_then_ok(
        start_worker: StartWorker, processes: list[Process], tmp_path: Path,
        binaries: Binaries, gemma: Path) -> None:
    port = await start_worker()
    worker = processes[-1]
    http_port = free_port()
    coordinator = await _spawn(
        [str(binaries.llama_server), "-m", str(gemma), "--rpc", f"{HOST}:{port}", "-ngl", "99",
         "--port", str(http_port), "--host", HOST, "-c", "512"], tmp_path / "llama-server.log")
    processes.append(coordinator)
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while True:
            assert coordinator.returncode is None, (tmp_path / "llama-server.log").read_text()
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://{HOST}:{http_port}/health") as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, "llama-server never became healthy"
            await asyncio.sleep(0.2)

    for _ in range(2):  # two abandoned connections: the worker must survive answering them
        busy = await probe_rpc(HOST, port, timeout_s=0.5)
        assert busy.state == "busy", busy.detail

    await _stop(coordinator)
    status = await _wait_probe(port, "ok", timeout_s=10)
    assert status.state == "ok", status.detail
    assert status.version == (7, 0, 0) and status.devices
    assert worker.returncode is None


# --- nothing there, and peers that are not a protocol-7 rpc-server ---------------------------


async def test_nothing_listening_is_unreachable() -> None:
    port = free_port()
    status = await probe_rpc(HOST, port)
    assert status.state == "unreachable"
    assert f"{HOST}:{port}" in status.detail
    assert status.version is None and status.latency_ms is None
    snap = snapshot_from(Endpoint("llamacpp-rpc", HOST, port), status)
    assert snap.health is Health.DOWN and snap.role is Role.WORKER and snap.version == ""


async def test_unresolvable_host_is_unreachable() -> None:
    status = await probe_rpc("no-such-host.invalid", 50052, timeout_s=2)
    assert status.state == "unreachable"


async def test_connect_timeout_is_unreachable() -> None:
    # A listener with a full accept queue that never accepts: the kernel drops further SYNs.
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect((HOST, port))
                fillers.append(s)
            await asyncio.sleep(0.1)
            status = await probe_rpc(HOST, port, timeout_s=0.3)
        finally:
            for s in fillers:
                s.close()
    assert status.state == "unreachable", status.detail
    assert "within 0.3s" in status.detail


async def test_silent_peer_is_busy() -> None:
    received = bytearray()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(100):
            received.extend(chunk)

    async with fake_server(silent) as port:
        started = time.perf_counter()
        status = await probe_rpc(HOST, port, timeout_s=0.2)
        elapsed = time.perf_counter() - started
    assert status.state == "busy", status.detail
    assert elapsed < 1.0
    # Exactly HELLO, as protocol 7 wants it: id 14, size 24, 24 zero capability bytes.
    assert bytes(received) == HELLO_V7


@pytest.mark.parametrize("answer", [
    bytes([6, 1, 0]),                 # old servers: major, minor, patch
    bytes([8, 0, 0, 0]) + bytes(24),  # a newer major in today's layout
])
async def test_other_major_version_is_incompatible_and_gets_nothing_more(answer: bytes) -> None:
    after_hello = bytearray()

    async def foreign(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(HELLO_V7))
        writer.write(struct.pack("<Q", len(answer)) + answer)
        await writer.drain()
        while chunk := await reader.read(100):
            after_hello.extend(chunk)

    async with fake_server(foreign) as port:
        status = await probe_rpc(HOST, port)
        await asyncio.sleep(0.05)
    assert status.state == "incompatible"
    assert status.version == (answer[0], answer[1], answer[2])
    assert f"{answer[0]}.{answer[1]}.{answer[2]}" in status.detail
    assert after_hello == b"", "the probe sent a command after an incompatible HELLO"
    snap = snapshot_from(Endpoint("llamacpp-rpc", HOST, port), status)
    assert snap.health is Health.INCOMPATIBLE
    assert snap.version == f"rpc {answer[0]}.{answer[1]}.{answer[2]}"


def _v7_hello() -> bytes:
    return struct.pack("<Q", 28) + bytes([7, 0, 0, 0]) + bytes(24)


@pytest.mark.parametrize(("script", "expect"), [
    # an HTTP server: the first 8 bytes read as an absurd size
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a llama.cpp"),
    # HELLO of the right major but the wrong size
    (struct.pack("<Q", 5) + bytes([7, 0, 0, 0, 0]), "5 bytes"),
    # DEVICE_COUNT answered with 8 bytes instead of 4
    (_v7_hello() + struct.pack("<Q", 8) + bytes(8), "DEVICE_COUNT with 8 bytes"),
    # zero devices
    (_v7_hello() + struct.pack("<QI", 4, 0), "0 devices"),
    # GET_DEVICE_MEMORY answered short
    (_v7_hello() + struct.pack("<QI", 4, 1) + struct.pack("<QQ", 8, 1), "GET_DEVICE_MEMORY(0)"),
])
async def test_malformed_answers_are_incompatible(script: bytes, expect: str) -> None:
    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(HELLO_V7))
        writer.write(script)
        await writer.drain()
        await reader.read()

    async with fake_server(scripted) as port:
        status = await probe_rpc(HOST, port, timeout_s=0.5)
    assert status.state == "incompatible", status.detail
    assert expect in status.detail


async def test_peer_that_hangs_up_on_hello_is_incompatible() -> None:
    """What a server older than protocol 7 does with a 24-byte HELLO."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(9)

    async with fake_server(hang_up) as port:
        status = await probe_rpc(HOST, port)
    assert status.state == "incompatible"
    assert "closed the connection" in status.detail


async def test_fake_v7_worker_with_two_devices() -> None:
    """The byte layout, checked independently of rpc-server: commands, indexes, answers."""
    commands: list[tuple[int, bytes]] = []
    memory = {0: (3 << 30, 8 << 30), 1: (1 << 30, 2 << 30)}

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while header := await reader.read(9):
            while len(header) < 9:
                header += await reader.readexactly(9 - len(header))
            cmd, size = header[0], struct.unpack("<Q", header[1:])[0]
            payload = await reader.readexactly(size)
            commands.append((cmd, payload))
            if cmd == 14:
                writer.write(_v7_hello())
            elif cmd == 15:
                writer.write(struct.pack("<QI", 4, 2))
            elif cmd == 11:
                free, total = memory[struct.unpack("<I", payload)[0]]
                writer.write(struct.pack("<QQQ", 16, free, total))
            await writer.drain()

    async with fake_server(worker) as port:
        status = await probe_rpc(HOST, port)
    assert status.state == "ok", status.detail
    assert [(d.name, d.free_bytes, d.total_bytes) for d in status.devices] == [
        ("device 0", 3 << 30, 8 << 30), ("device 1", 1 << 30, 2 << 30)]
    assert commands == [(14, bytes(24)), (15, b""), (11, struct.pack("<I", 0)),
                        (11, struct.pack("<I", 1))]


# --- sockets are always closed ---------------------------------------------------------------


async def test_cancelled_probe_closes_its_socket() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # EOF or reset when the probe goes away
        finally:
            closed.set()

    async with fake_server(silent) as port:
        before = _open_fds()
        task = asyncio.create_task(probe_rpc(HOST, port, timeout_s=30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 2)
        await asyncio.sleep(0.01)
        assert _open_fds() <= before


async def test_no_socket_is_left_open(start_worker: StartWorker) -> None:
    port = await start_worker()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(HELLO_V7))
        writer.write(struct.pack("<Q", 3) + bytes([6, 0, 0]))
        await reader.read()

    async with fake_server(silent) as busy_port, fake_server(old) as old_port:
        await probe_rpc(HOST, port)  # warm up lazily created loop resources
        await asyncio.sleep(0.01)
        before = _open_fds()
        for _ in range(5):
            states = [(await probe_rpc(HOST, p, timeout_s=t)).state
                      for p, t in ((port, 2.0), (busy_port, 0.2), (old_port, 2.0),
                                   (free_port(), 2.0))]
            assert states == ["ok", "busy", "incompatible", "unreachable"]
        await asyncio.sleep(0.05)
        assert _open_fds() <= before
