"""Keep client connections from exhausting the server: a header timeout, a keep-alive timeout and
a connection limit, for the gateway and the agent alike.

aiohttp closes a connection that is idle or stuck in its header only after its keep-alive timeout
(which :func:`~sollol_core.listening.serve_until_signalled` passes on), and has no header timeout
nor any connection limit. :class:`GuardedSite` listens like ``web.TCPSite`` but wraps each
connection's aiohttp protocol in a :class:`GuardedConnection`, which :class:`ConnectionGuard`
counts, times and closes. The request path pays one attribute test per chunk received; the
timing is done by one sweep every fraction of a second over the open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from attrs import field, frozen, validators

#: Client connections at most where the process has no open-file limit to halve.
UNLIMITED_FILES_CONNECTIONS = 32768
#: ``header_since`` of a connection whose header is not being timed.
NOT_TIMED = -1.0
#: What a client whose header took too long reads before the connection closes.
REQUEST_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                            b"Content-Type: text/plain\r\nContent-Length: 41\r\n\r\n"
                            b"the request header took too long to send\n")


@frozen
class ServerLimits:
    """How long clients may take and how many may be connected (the gateway's settings of the
    same names; their defaults for the agent)."""

    #: A request's header must be complete this long after its first byte.
    header_timeout_s: float = field(default=60.0, validator=validators.gt(0))
    #: An idle connection (before its first request or between requests) is closed after this.
    keepalive_timeout_s: float = field(default=75.0, validator=validators.gt(0))
    #: Client connections at once; 0: half of this process's open-file limit.
    max_connections: int = field(default=0, validator=validators.ge(0))
    #: On the first SIGINT/SIGTERM, running requests get this long to finish.
    shutdown_timeout_s: float = field(default=30.0, validator=validators.gt(0))

    def connection_limit(self) -> int:
        """``max_connections``, or half the open-file limit (the rest is for the nodes, the
        workers and the process itself)."""
        if self.max_connections:
            return self.max_connections
        try:
            import resource
        except ImportError:  # Windows: no such limit to read
            return UNLIMITED_FILES_CONNECTIONS
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return UNLIMITED_FILES_CONNECTIONS
        return max(1, soft // 2)


def _waiting_for_request(handler: RequestHandler) -> bool:
    """Whether aiohttp's connection loop waits for a request's header: the connection is idle
    or its header incomplete, not running a request (from its parsed header until its response
    is sent). aiohttp has no public flag for this; this is the test its own keep-alive timer
    makes."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


class GuardedConnection(asyncio.Protocol):
    """One client connection: aiohttp's protocol, plus when its current header began."""

    __slots__ = ("admitted", "guard", "handler", "header_since", "headers_seen", "transport")

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler) -> None:
        self.guard = guard
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        #: When the first byte of a header not yet complete arrived (``NOT_TIMED``: none).
        self.header_since = NOT_TIMED
        #: Requests aiohttp had parsed on this connection when the guard last looked.
        self.headers_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        if not self.guard.admit(self):
            transport.close()
            return
        self.admitted = True
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.header_since < 0.0:  # the hot path: one test while a request is timed
            self.header_since = self.guard.loop.time()
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        self.handler.eof_received()
        return None  # as aiohttp's: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.admitted:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def close(self, response: bytes = b"") -> None:
        """Close now, after writing ``response`` (for a client that reads no answer: none)."""
        self.guard.forget(self)
        if response and self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)
        self.handler.force_close()


class ConnectionGuard:
    """The open client connections of one listening site, oldest first: admits, times and
    closes them."""

    def __init__(self, limits: ServerLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.header_timeout_s = limits.header_timeout_s
        self.max_connections = limits.connection_limit()
        # Dicts keep insertion order: the first connection is the oldest.
        self.open: dict[GuardedConnection, None] = {}
        # A header is closed between 1 and 1.25 header timeouts (at most 1 s) after its first byte.
        self.sweep_interval_s = min(max(self.header_timeout_s / 4, 0.05), 1.0)
        self._sweeper: asyncio.Task[None] | None = None

    def protocol_factory(self, server: Server) -> Callable[[], GuardedConnection]:
        """What ``loop.create_server`` calls for each new connection."""
        return lambda: GuardedConnection(self, server())

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def admit(self, connection: GuardedConnection) -> bool:
        """Count ``connection`` in, first closing the oldest connection not running a request
        if the limit is reached; False (refuse it) if every connection is running one."""
        if len(self.open) >= self.max_connections:
            idle = next((c for c in self.open if _waiting_for_request(c.handler)), None)
            if idle is None:
                return False
            idle.close()
        self.open[connection] = None
        return True

    def forget(self, connection: GuardedConnection) -> None:
        self.open.pop(connection, None)

    def sweep(self) -> None:
        """Close each connection whose header has been arriving for longer than the header
        timeout; stop timing those whose header has since completed."""
        deadline = self.loop.time() - self.header_timeout_s
        expired = []
        for connection in self.open:
            handler = connection.handler
            parsed = handler._request_count  # headers aiohttp has parsed on this connection
            if parsed != connection.headers_seen or not _waiting_for_request(handler):
                # The bytes being timed were a complete header, or a running request's body
                # (which the body timeout bounds): the next byte received times again.
                connection.headers_seen = parsed
                connection.header_since = NOT_TIMED
            elif 0.0 <= connection.header_since < deadline:
                expired.append(connection)
        for connection in expired:
            connection.close(REQUEST_TIMEOUT_RESPONSE)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            self.sweep()


class GuardedSite(web.BaseSite):
    """``web.TCPSite``, with each connection under a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limits: ServerLimits,
                 backlog: int = 511) -> None:
        # nginx's backlog on Linux: room for valid clients while hostile ones churn
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = ConnectionGuard(limits, asyncio.get_running_loop())

    @property
    def guard(self) -> ConnectionGuard:
        return self._guard

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await self._guard.loop.create_server(
            self._guard.protocol_factory(server), self._host, self._port, backlog=self._backlog)
        self._guard.start()

    async def stop(self) -> None:
        await super().stop()
        # aiohttp's shutdown closes every connection not running a request from here on
        await self._guard.stop()
