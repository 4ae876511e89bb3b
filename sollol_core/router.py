"""The request path: placement, observation, execution and fail-over. No HTTP here.

:meth:`Router.open` places a request and waits for its first chunk, failing over to the next-best
node while nothing has been sent; the returned :class:`Reply` then relays the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from attrs import define, evolve, field, frozen

from sollol_core.config import Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.fleet import Fleet
from sollol_core.hookspecs import Chunk
from sollol_core.plugins import Plugins
from sollol_core.types import Decision, InferenceRequest, RequestRecord


@frozen
class Routing:
    """Where a request ran and why: the ``_routing`` object of the Python API and the headers."""

    backend: str
    node: str
    reason: str
    policy: str
    duration_ms: float
    queue_ms: float
    attempts: int


@define
class Router:
    plugins: Plugins
    settings: Settings
    fleet: Fleet

    @classmethod
    def create(cls, settings: Settings, plugins: Plugins | None = None) -> Router:
        """Load plugins (unless given) and build the fleet; nothing runs until :meth:`start`."""
        plugins = plugins or Plugins.load(settings.plugins)
        return cls(plugins=plugins, settings=settings, fleet=Fleet(plugins, settings))

    async def start(self) -> None:
        await self.fleet.start()

    async def stop(self) -> None:
        await self.fleet.stop()

    def decide(self, request: InferenceRequest, *,
               exclude: frozenset[str] = frozenset()) -> Decision:
        """Ask the placement policies; ``exclude`` holds the nodes this request already tried."""
        fleet = self.fleet.snapshot()
        if exclude:
            fleet = evolve(fleet, nodes=tuple(n for n in fleet.nodes
                                              if n.endpoint.key not in exclude))
        decision = self.plugins.place(request, fleet)
        if decision is None:
            raise NoRouteError("no placement policy is enabled (is builtin-placement blocked?)")
        return decision

    async def open(self, request: InferenceRequest) -> Reply:
        """Place and start a request; returns once its first chunk is in hand."""
        started = time.monotonic()
        tried: set[str] = set()
        failures: list[str] = []
        decision: Decision | None = None
        for attempt in range(1, self.settings.routing.max_attempts + 1):
            try:
                decision = self.decide(request, exclude=frozenset(tried))
            except NoRouteError as exc:
                await self._finish_failed(request, decision, started, attempt - 1, str(exc))
                raise
            await self.plugins.notify_decision(decision, request)
            if not decision.placed:
                reason = decision.reason
                if failures:
                    reason = f"{reason}; earlier attempts: {'; '.join(failures)}"
                await self._finish_failed(request, decision, started, attempt, reason)
                raise NoRouteError(reason) if not failures else BackendError(reason)
            stream = self.plugins.execute(request, decision, self.settings)
            if stream is None:
                reason = f"no plugin can run requests on {decision.backend}"
                await self._finish_failed(request, decision, started, attempt, reason)
                raise NoRouteError(reason)
            key = decision.target.key if decision.target else decision.backend
            self.fleet.adjust_in_flight(key, +1)
            try:
                first = await asyncio.wait_for(
                    anext(stream), self.settings.routing.first_token_timeout_s)
            except StopAsyncIteration:
                first = None
            except (BackendError, OSError, TimeoutError) as exc:
                self.fleet.adjust_in_flight(key, -1)
                tried.add(key)
                failures.append(f"{decision.backend}: {_describe(exc)}")
                if isinstance(exc, BackendError) and not exc.retryable:
                    await self._finish_failed(request, decision, started, attempt, failures[-1])
                    raise
                continue
            return Reply(router=self, request=request, decision=decision, stream=stream,
                         first=first, attempts=attempt, started=started, node_key=key)
        reason = f"all {len(failures)} attempts failed: {'; '.join(failures)}"
        await self._finish_failed(request, decision, started, len(failures), reason)
        raise BackendError(reason)

    async def run(self, request: InferenceRequest) -> tuple[list[Chunk], Routing]:
        """Run a request to the end and return every chunk with where it ran."""
        reply = await self.open(request)
        chunks = [chunk async for chunk in reply]
        return chunks, reply.routing()

    async def _finish_failed(self, request: InferenceRequest, decision: Decision | None,
                             started: float, attempts: int, error: str) -> None:
        await self.plugins.notify_finished(RequestRecord(
            request_id=request.id, model=request.model, operation=request.operation, ok=False,
            duration_ms=(time.monotonic() - started) * 1000, decision=decision, error=error,
            attempts=attempts))


@define
class Reply:
    """A started request: its decision, and the chunks still to come (the first one included)."""

    router: Router
    request: InferenceRequest
    decision: Decision
    stream: AsyncIterator[Chunk]
    first: Chunk | None
    attempts: int
    started: float
    node_key: str
    first_chunk_ms: float = field(init=False)
    _done: bool = False

    def __attrs_post_init__(self) -> None:
        self.first_chunk_ms = (time.monotonic() - self.started) * 1000

    def routing(self) -> Routing:
        target = self.decision.target
        return Routing(
            backend=target.kind if target else "sharded",
            node=target.address if target else self.decision.backend,
            reason=self.decision.reason,
            policy=self.decision.policy,
            duration_ms=round((time.monotonic() - self.started) * 1000, 3),
            queue_ms=0.0,
            attempts=self.attempts,
        )

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        chunks = 0
        error: str | None = None
        try:
            if self.first is not None:
                chunks += 1
                yield self.first
            async for chunk in self.stream:
                chunks += 1
                yield chunk
        except BaseException as exc:
            error = _describe(exc)
            raise
        finally:
            await self.close(chunks, error)

    async def close(self, chunks: int = 0, error: str | None = None) -> None:
        """Release the node and report the request finished (once)."""
        if self._done:
            return
        self._done = True
        closer: Any = getattr(self.stream, "aclose", None)
        if closer is not None:
            await closer()
        self.router.fleet.adjust_in_flight(self.node_key, -1)
        await self.router.plugins.notify_finished(RequestRecord(
            request_id=self.request.id, model=self.request.model,
            operation=self.request.operation, ok=error is None,
            duration_ms=(time.monotonic() - self.started) * 1000, decision=self.decision,
            error=error, attempts=self.attempts, first_chunk_ms=self.first_chunk_ms,
            chunks=chunks))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out before the first chunk"
    return str(exc) or type(exc).__name__
