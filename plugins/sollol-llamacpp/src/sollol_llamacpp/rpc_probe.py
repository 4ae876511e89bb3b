"""A native, read-only probe of a llama.cpp ``rpc-server`` worker (RPC protocol 7).

It speaks the worker's own protocol (``ggml/src/ggml-rpc/ggml-rpc.cpp``): a request is one
command byte, an 8-byte little-endian payload size and the payload; a response is an 8-byte size
and the payload. The probe sends HELLO (command 14, 24 zero capability bytes = plain TCP), then
DEVICE_COUNT (15) and GET_DEVICE_MEMORY (11) per device, and closes. It changes nothing on the
worker.

What the answers mean:

- connection refused, unresolvable name, connect timeout -> ``unreachable``;
- TCP connect succeeds but HELLO is not answered in time -> ``busy``: ``rpc-server`` serves ONE
  client at a time and a coordinator (``llama-server --rpc``) keeps its connection for as long
  as its model is loaded, so our connection waits in the kernel's accept queue;
- HELLO answered with another major version -> ``incompatible`` (nothing more is sent: command
  ids other than HELLO move between major versions); any malformed answer -> ``incompatible``;
- otherwise ``ok``, with each device's free and total memory.

Two properties of ``rpc-server`` shape how the probe hangs up:

- A connection we give up on (busy) stays in the worker's accept queue; the worker accepts it
  when the coordinator leaves, reads our HELLO and answers it. Had we closed with a FIN, that
  answer would meet a reset and the worker's second ``send()`` would raise SIGPIPE, which
  ``rpc-server`` does not ignore: probing a busy worker would kill it once it became free. So
  every connection we abandon is closed with a reset (``SO_LINGER`` 0): the worker's first
  ``send()`` then fails with ECONNRESET (no signal) and it moves on.
- It listens with a backlog of 1. Abandoned connections occupy that queue until the worker
  accepts them, so repeated probes of a held worker can fill it; the kernel then drops new
  SYNs and a probe sees a connect timeout, indistinguishable from a host that does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Literal

from attrs import frozen

from sollol_core.types import DeviceMemory, Endpoint, Health, NodeSnapshot, Role

__all__ = [
    "CMD_DEVICE_COUNT",
    "CMD_GET_DEVICE_MEMORY",
    "CMD_HELLO",
    "PROTOCOL_MAJOR",
    "RpcState",
    "RpcStatus",
    "probe_rpc",
    "snapshot_from",
]

#: The RPC protocol this probe speaks (``RPC_PROTO_MAJOR_VERSION`` in ``ggml-rpc.h``).
PROTOCOL_MAJOR = 7
#: Fixed in every protocol version (``static_assert(RPC_CMD_HELLO == 14)``).
CMD_HELLO = 14
#: Protocol 7 ids; they differ in other major versions.
CMD_GET_DEVICE_MEMORY = 11
CMD_DEVICE_COUNT = 15

#: ``RPC_CONN_CAPS_SIZE``: transport capabilities in HELLO; all zero = plain TCP, no RDMA.
_CONN_CAPS_SIZE = 24
#: ``rpc_msg_hello_rsp``: major, minor, patch, padding, conn_caps.
_HELLO_RSP_SIZE = 4 + _CONN_CAPS_SIZE
#: Older servers answered HELLO with just major, minor, patch.
_MIN_HELLO_RSP_SIZE = 3
#: More than any real HELLO answer; a larger size means the peer is not an RPC server.
_MAX_HELLO_RSP_SIZE = 1024
_DEVICE_COUNT_RSP = struct.Struct("<I")
_DEVICE_MEMORY_REQ = struct.Struct("<I")
_DEVICE_MEMORY_RSP = struct.Struct("<QQ")
_SIZE = struct.Struct("<Q")
#: A sanity bound: a worker with more devices than this is not telling the truth.
_MAX_DEVICES = 256

RpcState = Literal["unreachable", "busy", "incompatible", "ok"]

_HEALTH: dict[str, Health] = {
    "ok": Health.UP,
    "busy": Health.BUSY,
    "incompatible": Health.INCOMPATIBLE,
    "unreachable": Health.DOWN,
}


@frozen
class RpcStatus:
    """What one probe learnt about one ``rpc-server``."""

    state: RpcState
    #: (major, minor, patch) from the HELLO answer; None when there was none.
    version: tuple[int, int, int] | None
    devices: tuple[DeviceMemory, ...]
    detail: str
    #: Connect + HELLO round trip; None when HELLO was not answered.
    latency_ms: float | None


class _Malformed(Exception):
    """The peer answered something that is not protocol 7."""


def _frame(cmd: int, payload: bytes = b"") -> bytes:
    return bytes((cmd,)) + _SIZE.pack(len(payload)) + payload


async def _read_reply(reader: asyncio.StreamReader, expected: int, what: str) -> bytes:
    size = _SIZE.unpack(await reader.readexactly(_SIZE.size))[0]
    if size != expected:
        raise _Malformed(f"answered {what} with {size} bytes, expected {expected}")
    return await reader.readexactly(expected)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset, at once (see the module docstring for why not a FIN)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _version_text(version: tuple[int, int, int]) -> str:
    return ".".join(str(v) for v in version)


async def probe_rpc(host: str, port: int, *, timeout_s: float = 1.0) -> RpcStatus:
    """Probe the ``rpc-server`` at ``host:port``; never raises for network trouble.

    ``timeout_s`` bounds the TCP connect, the HELLO answer and the rest of the exchange, each.
    """
    where = f"{host}:{port}"
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    graceful = False
    try:
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return RpcStatus(
                "unreachable", None, (),
                f"no TCP connection to {where} within {timeout_s:g}s (host down or filtered, "
                "or a held worker whose accept queue is full)", None)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            return RpcStatus("unreachable", None, (), f"cannot connect to {where}: {reason}",
                             None)

        # HELLO: the only command every version understands.
        writer.write(_frame(CMD_HELLO, bytes(_CONN_CAPS_SIZE)))
        try:
            async with asyncio.timeout(timeout_s):
                await writer.drain()
                size = _SIZE.unpack(await reader.readexactly(_SIZE.size))[0]
                if not _MIN_HELLO_RSP_SIZE <= size <= _MAX_HELLO_RSP_SIZE:
                    return RpcStatus(
                        "incompatible", None, (),
                        f"{where} answered HELLO with a {size}-byte payload: not a llama.cpp "
                        "RPC server", None)
                hello = await reader.readexactly(size)
        except TimeoutError:
            return RpcStatus(
                "busy", None, (),
                f"{where} accepted the connection but did not answer HELLO within "
                f"{timeout_s:g}s: rpc-server serves one client at a time, so a coordinator "
                "probably holds it", None)
        except (asyncio.IncompleteReadError, OSError) as exc:
            return RpcStatus(
                "incompatible", None, (),
                f"{where} closed the connection after HELLO ({_why(exc)}): a server older than "
                f"RPC protocol {PROTOCOL_MAJOR} drops a {_CONN_CAPS_SIZE}-byte HELLO, and so does "
                "anything that is not an RPC server", None)
        latency_ms = (time.perf_counter() - started) * 1000.0
        version = (hello[0], hello[1], hello[2])
        if version[0] != PROTOCOL_MAJOR:
            graceful = True  # the whole answer was read; the server waits for a command
            return RpcStatus(
                "incompatible", version, (),
                f"{where} speaks RPC protocol {_version_text(version)}; SOLLOL speaks "
                f"{PROTOCOL_MAJOR}.x (the llama.cpp builds of worker and coordinator must match)",
                latency_ms)
        if size != _HELLO_RSP_SIZE:
            return RpcStatus(
                "incompatible", version, (),
                f"{where} answered HELLO with {size} bytes, protocol {PROTOCOL_MAJOR} sends "
                f"{_HELLO_RSP_SIZE}", latency_ms)

        try:
            async with asyncio.timeout(timeout_s):
                devices = await _devices(reader, writer)
        except _Malformed as exc:
            return RpcStatus("incompatible", version, (), f"{where} {exc}", latency_ms)
        except TimeoutError:
            return RpcStatus(
                "incompatible", version, (),
                f"{where} answered HELLO but not DEVICE_COUNT/GET_DEVICE_MEMORY within "
                f"{timeout_s:g}s", latency_ms)
        except (asyncio.IncompleteReadError, OSError) as exc:
            return RpcStatus(
                "incompatible", version, (),
                f"{where} closed the connection during DEVICE_COUNT/GET_DEVICE_MEMORY "
                f"({_why(exc)})", latency_ms)
        graceful = True
        free = sum(d.free_bytes for d in devices)
        total = sum(d.total_bytes for d in devices)
        return RpcStatus(
            "ok", version, devices,
            f"RPC {_version_text(version)} worker, {len(devices)} device(s), "
            f"{_fmt_bytes(free)} free of {_fmt_bytes(total)}", latency_ms)
    finally:
        if writer is not None:
            if graceful:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()  # closed when we return, not a loop turn later
            else:
                _abort(writer)


async def _devices(reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> tuple[DeviceMemory, ...]:
    writer.write(_frame(CMD_DEVICE_COUNT))
    await writer.drain()
    (count,) = _DEVICE_COUNT_RSP.unpack(
        await _read_reply(reader, _DEVICE_COUNT_RSP.size, "DEVICE_COUNT"))
    if not 0 < count <= _MAX_DEVICES:
        raise _Malformed(f"reports {count} devices")
    # The server handles commands in order, so all requests can go out at once.
    writer.write(b"".join(_frame(CMD_GET_DEVICE_MEMORY, _DEVICE_MEMORY_REQ.pack(i))
                          for i in range(count)))
    await writer.drain()
    devices = []
    for i in range(count):
        free, total = _DEVICE_MEMORY_RSP.unpack(
            await _read_reply(reader, _DEVICE_MEMORY_RSP.size, f"GET_DEVICE_MEMORY({i})"))
        devices.append(DeviceMemory(name=f"device {i}", total_bytes=total, free_bytes=free))
    return tuple(devices)


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return f"end of stream after {len(exc.partial)} of {exc.expected} bytes"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def snapshot_from(endpoint: Endpoint, status: RpcStatus) -> NodeSnapshot:
    """The fleet's view of one probe: a WORKER node (it serves no request itself)."""
    version = f"rpc {_version_text(status.version)}" if status.version is not None else ""
    return NodeSnapshot(
        endpoint=endpoint,
        health=_HEALTH[status.state],
        taken_at=time.time(),
        role=Role.WORKER,
        latency_ms=status.latency_ms,
        version=version,
        detail=status.detail,
        devices=status.devices,
    )
