"""A protocol-faithful Ollama server on loopback, for tests."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from aiohttp import web

from .cost import CostModel, SlotCache
from .inference import InferenceMixin
from .models import DEFAULT_MODELS, EmulatedModel, display_name, rfc3339
from .protocol import (
    FAILURE_KINDS,
    ApiError,
    FailureKind,
    decode_body,
    drop_connection,
    error_response,
    json_reply,
)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_EPOCH = datetime(2025, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
_FOREVER = timedelta(days=292 * 365)


def _host_allowed(host: str) -> bool:
    """Ollama's Host-header guard for a loopback listener."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name.startswith("[") and "]" in name:
        name = name[1:name.index("]")]
    name = name.lower()
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return (name in ("localhost", socket.gethostname().lower())
                or name.endswith((".localhost", ".local", ".internal")))
    return (address.is_loopback or address.is_private or address.is_unspecified
            or address.is_link_local)


class OllamaEmulator(InferenceMixin):
    """An Ollama server emulator on aiohttp; see the package docstring for an example.

    ``check_host`` turns on Ollama's Host-header guard (403 for foreign ``Host`` values).
    """

    def __init__(
        self,
        *,
        name: str = "emulator",
        models: Sequence[EmulatedModel] = DEFAULT_MODELS,
        loaded: Sequence[str] = (),
        tokens_per_s: float = 500.0,
        latency_s: float = 0.0,
        parallel: int = 1,
        max_queue: int = 512,
        version: str = "0.33.0",
        reply_words: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
        check_host: bool = False,
        cost: CostModel | None = None,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.name = name
        self.models = tuple(models)
        self.loaded = {display_name(n) for n in loaded}
        self.tokens_per_s = tokens_per_s
        self.latency_s = latency_s
        self.parallel = parallel
        self.max_queue = max_queue
        self.version = version
        self.reply_words = reply_words
        #: Prefill time, per-slot prompt cache and output length (off: replies are instant
        #: after ``latency_s`` and ``reply_words`` long).
        self.cost = cost
        self.host = host
        self.port = port
        self.check_host = check_host
        self.requests = []
        self._failures = deque()
        self._pending = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._expires = {}
        self._context = {}
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._starts = 0

    # -- public surface ----------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` (the real port once started)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def in_flight(self) -> int:
        """Inference requests received and not yet answered (queued ones included)."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The highest :attr:`in_flight` seen."""
        return self._max_in_flight

    @property
    def pending(self) -> int:
        """Inference requests waiting for a free slot."""
        return self._pending

    @property
    def running(self) -> bool:
        return self._runner is not None

    def fail_next(self, kind: FailureKind, count: int = 1) -> None:
        """Script a failure for each of the next ``count`` inference requests.

        ``refuse``: close the connection without a response; ``error500``: 500
        ``{"error": "emulated failure"}``; ``hang``: never answer (until :meth:`stop`);
        ``die_midstream``: 200, some chunks, then the connection drops (no final line);
        ``error_midstream``: 200, some chunks, then a last line ``{"error": ...}``;
        ``stall_midstream``: 200, some chunks, then silence (the connection stays open until the
        client leaves or :meth:`stop`).
        """
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {FAILURE_KINDS}")
        self._failures.extend([kind] * count)

    async def start(self) -> None:
        """Bind and serve; :attr:`port` is then the real port. Restarting keeps the port."""
        if self._runner is not None:
            return
        if self._starts:
            self.loaded.clear()
            self._expires.clear()
        self._starts += 1
        self._stopping = False
        self._slots = asyncio.Semaphore(self.parallel)
        self._slot_cache = SlotCache(self.parallel)
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 2**20)
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps, allow_head=False)
        for path in ("/api/show", "/api/generate", "/api/chat", "/api/embed", "/api/embeddings"):
            app.router.add_post(path, self._json_endpoint)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and every connection; hung or streaming handlers are cancelled."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        for site in list(runner.sites):
            await site.stop()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await runner.cleanup()

    async def __aenter__(self) -> OllamaEmulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<OllamaEmulator {self.name} {self.address}>"

    # -- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        if self._stopping or task is None:
            drop_connection(request, abort=True)
            return web.Response()
        self._tasks.add(task)
        try:
            if self.check_host and not _host_allowed(request.host):
                return web.Response(status=403)
            return await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="404 page not found")
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="405 method not allowed")
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except ConnectionError:
            drop_connection(request, abort=True)
            return web.Response()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            task.uncancel()
            drop_connection(request, abort=True)
            return web.Response()
        finally:
            self._tasks.discard(task)

    async def _json_endpoint(self, request: web.Request) -> web.StreamResponse:
        body = decode_body(await request.read(), request.path)
        if request.path == "/api/show":
            return self._show(body)
        return await self._inference(request, body)

    # -- simple endpoints --------------------------------------------------------------------
    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return json_reply({"version": self.version})

    def _modified_at(self, index: int) -> datetime:
        return _EPOCH - timedelta(hours=index)

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        return json_reply({"models": [
            model.tag_entry(self._modified_at(i)) for i, model in enumerate(self.models)]})

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        self._prune()
        now = datetime.now(UTC).astimezone()
        entries: list[tuple[float, dict[str, Any]]] = []
        for model in self.models:
            if model.name not in self.loaded:
                continue
            expires = self._expires[model.name]
            remaining = expires - now.timestamp()
            moment = now + (_FOREVER if remaining > _FOREVER.total_seconds()
                            else timedelta(seconds=remaining))
            context = self._context.get(model.name, min(4096, model.context_length))
            size = model.size_bytes + context * model.block_count * 1024
            entries.append((remaining, {
                "name": model.name, "model": model.name, "size": size,
                "digest": model.digest, "details": model.details(),
                "expires_at": rfc3339(moment), "size_vram": size, "context_length": context,
            }))
        entries.sort(key=lambda entry: -entry[0])
        return json_reply({"models": [entry for _, entry in entries]})

    def _show(self, body: dict[str, Any]) -> web.Response:
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise ApiError(400, "model is required")
        model = self._lookup(name, f"model '{display_name(name)}' not found")
        index = self.models.index(model)
        return json_reply(model.show(self._modified_at(index),
                                            verbose=bool(body.get("verbose")),
                                            system=str(body.get("system") or "")))
