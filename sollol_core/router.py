"""The request path: admission, placement, observation, execution and fail-over. No HTTP here.

:meth:`Router.open` places a request and waits for its first chunk, failing over to the next-best
node while nothing has been sent; the returned :class:`Reply` then relays the rest. A request
whose chosen node is at capacity waits in the :class:`~sollol_core.queue.AdmissionQueue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from attrs import define, evolve, field, frozen

from sollol_core.breaker import Breakers
from sollol_core.config import Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.fleet import Fleet
from sollol_core.hookspecs import Chunk
from sollol_core.plugins import Plugins
from sollol_core.queue import AdmissionQueue
from sollol_core.types import AttemptRecord, Decision, InferenceRequest, RequestRecord

#: How often a queued request re-checks capacity even without a release (probes change it too).
RECHECK_S = 0.5


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
    queue: AdmissionQueue
    breakers: Breakers = field(factory=Breakers)
    _lifespan: contextlib.AsyncExitStack | None = None

    @classmethod
    def create(cls, settings: Settings, plugins: Plugins | None = None) -> Router:
        """Load plugins (unless given) and build the fleet; nothing runs until :meth:`start`."""
        plugins = plugins or Plugins.load(settings.plugins)
        return cls(plugins=plugins, settings=settings, fleet=Fleet(plugins, settings),
                   queue=AdmissionQueue(settings.routing.queue_size,
                                        settings.routing.aging_per_s))

    async def start(self) -> None:
        """Enter the plugins' lifespans, then start the probe schedule."""
        if self._lifespan is not None:
            return
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self.plugins.lifespan(self.settings))
        self._lifespan = stack
        try:
            await self.fleet.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.fleet.stop()
        stack, self._lifespan = self._lifespan, None
        if stack is not None:
            await stack.aclose()

    def decide(self, request: InferenceRequest, *,
               exclude: frozenset[str] = frozenset()) -> Decision:
        """Ask the placement policies; nodes in ``exclude`` or behind an open circuit are hidden."""
        fleet = self.fleet.snapshot()
        hidden = exclude | self.breakers.blocked(time.monotonic())
        if hidden:
            fleet = evolve(fleet, nodes=tuple(n for n in fleet.nodes
                                              if n.endpoint.key not in hidden))
        decision = self.plugins.place(request, fleet)
        if decision is None:
            raise NoRouteError("no placement policy is enabled (is builtin-placement blocked?)")
        return decision

    def _at_capacity(self, decision: Decision) -> bool:
        if decision.target is None:
            return False
        node = self.fleet.snapshot().node(decision.target.key)
        return node is not None and node.in_flight >= node.parallel

    async def _admit(self, request: InferenceRequest, tried: frozenset[str],
                     started: float) -> tuple[Decision, float]:
        """A decision whose node has room, waiting in the queue while it has none."""
        enqueued: float | None = None
        while True:
            decision = self.decide(request, exclude=tried)
            busy = self._at_capacity(decision) or (enqueued is None and len(self.queue) > 0)
            if not decision.placed or not busy:
                return decision, 0.0 if enqueued is None else time.monotonic() - enqueued
            enqueued = enqueued or time.monotonic()
            left = started + self.settings.routing.request_timeout_s - time.monotonic()
            if left <= 0:
                raise TimeoutError
            await self.queue.wait(request.priority, enqueued, timeout=min(RECHECK_S, left))

    async def open(self, request: InferenceRequest) -> Reply:
        """Place and start a request; returns once its first chunk is in hand."""
        started = time.monotonic()
        tried: set[str] = set()
        failures: list[str] = []
        decision: Decision | None = None
        queued_s = 0.0
        for attempt in range(1, self.settings.routing.max_attempts + 1):
            try:
                decision, waited = await self._admit(request, frozenset(tried), started)
            except Exception as exc:
                await self._finish_failed(request, decision, started, attempt - 1,
                                          _describe(exc), queued_s)
                raise
            queued_s += waited
            await self.plugins.notify_decision(decision, request)
            if not decision.placed:
                reason = decision.reason
                if failures:
                    reason = f"{reason}; earlier attempts: {'; '.join(failures)}"
                await self._finish_failed(request, decision, started, attempt, reason, queued_s)
                raise BackendError(reason) if failures else NoRouteError(reason)
            attempt_started = time.monotonic()
            headers = self.plugins.attempt_headers(request, decision, attempt)
            # Only traced attempts pay for a copy of the request.
            attempt_request = evolve(request, upstream_headers=headers) if headers else request
            stream = self.plugins.execute(attempt_request, decision, self.settings)
            if stream is None:
                await self.plugins.notify_attempt_finished(_attempt_record(
                    request, decision, attempt, attempt_started, error="no executor",
                    error_type="NoRouteError"))
                reason = f"no plugin can run requests on {decision.backend}"
                await self._finish_failed(request, decision, started, attempt, reason, queued_s)
                raise NoRouteError(reason)
            key = decision.target.key if decision.target else decision.backend
            breaker = self.breakers.of(key)
            breaker.started()
            self.fleet.adjust_in_flight(key, +1)
            try:
                # asyncio.timeout, not wait_for: no extra task per request on the hot path
                async with asyncio.timeout(self.settings.routing.first_token_timeout_s):
                    first = await anext(stream)
            except StopAsyncIteration:
                first = None
            except (BackendError, OSError, TimeoutError) as exc:
                self._release(key)
                breaker.record(False, time.monotonic())
                tried.add(key)
                failures.append(f"{decision.backend}: {_describe(exc)}")
                await _close_quietly(stream)
                await self.plugins.notify_attempt_finished(_attempt_record(
                    request, decision, attempt, attempt_started, error=_describe(exc),
                    error_type=_error_type(exc)))
                if isinstance(exc, BackendError) and not exc.retryable:
                    await self._finish_failed(request, decision, started, attempt,
                                              failures[-1], queued_s)
                    raise
                continue
            except BaseException as exc:
                self._release(key)
                await _close_quietly(stream)
                await self.plugins.notify_attempt_finished(_attempt_record(
                    request, decision, attempt, attempt_started, error=_describe(exc),
                    error_type=_error_type(exc)))
                raise
            return Reply(router=self, request=request, decision=decision, stream=stream,
                         first=first, attempts=attempt, started=started, node_key=key,
                         queue_ms=queued_s * 1000, attempt_started=attempt_started)
        reason = f"all {len(failures)} attempts failed: {'; '.join(failures)}"
        await self._finish_failed(request, decision, started, len(failures), reason, queued_s)
        raise BackendError(reason)

    def _release(self, key: str) -> None:
        self.fleet.adjust_in_flight(key, -1)
        self.queue.release()

    async def run(self, request: InferenceRequest) -> tuple[list[Chunk], Routing]:
        """Run a request to the end and return every chunk with where it ran."""
        reply = await self.open(request)
        chunks = [chunk async for chunk in reply]
        return chunks, reply.routing()

    async def _finish_failed(self, request: InferenceRequest, decision: Decision | None,
                             started: float, attempts: int, error: str, queued_s: float) -> None:
        await self.plugins.notify_finished(RequestRecord(
            request_id=request.id, model=request.model, operation=request.operation, ok=False,
            duration_ms=(time.monotonic() - started) * 1000, decision=decision, error=error,
            attempts=attempts, queue_ms=queued_s * 1000))


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
    queue_ms: float = 0.0
    attempt_started: float | None = None
    first_chunk_ms: float = field(init=False)
    attempt_first_chunk_ms: float = field(init=False)
    _done: bool = False

    def __attrs_post_init__(self) -> None:
        now = time.monotonic()
        self.first_chunk_ms = (now - self.started) * 1000
        self.attempt_first_chunk_ms = (now - (self.attempt_started or self.started)) * 1000

    def routing(self) -> Routing:
        target = self.decision.target
        return Routing(
            backend=target.kind if target else "sharded",
            node=target.address if target else self.decision.backend,
            reason=self.decision.reason,
            policy=self.decision.policy,
            duration_ms=round((time.monotonic() - self.started) * 1000, 3),
            queue_ms=round(self.queue_ms, 3),
            attempts=self.attempts,
        )

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        chunks = 0
        error: str | None = None
        error_type: str | None = None
        last: Chunk | None = None
        node_failed = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.router.settings.routing.request_timeout_s - (
            time.monotonic() - self.started)
        try:
            if self.first is not None:
                chunks, last = 1, self.first
                yield self.first
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(self.stream)
                except StopAsyncIteration:
                    break
                chunks, last = chunks + 1, chunk
                yield chunk
        except BaseException as exc:
            # The client leaving (generator closed, handler cancelled) is no fault of the node.
            node_failed = not isinstance(exc, GeneratorExit | asyncio.CancelledError)
            error_type = "cancelled" if not node_failed else _error_type(exc)
            error = _describe(exc) if not isinstance(exc, TimeoutError) else (
                f"the request ran longer than {self.router.settings.routing.request_timeout_s:g} s")
            if isinstance(exc, TimeoutError):
                raise BackendError(error, retryable=False) from None
            raise
        finally:
            await self.close(chunks, error, last, node_failed=node_failed,
                             error_type=error_type)

    async def close(self, chunks: int = 0, error: str | None = None,
                    last: Chunk | None = None, *, node_failed: bool = False,
                    error_type: str | None = None) -> None:
        """Release the node and report the request finished (once)."""
        if self._done:
            return
        self._done = True
        await _close_quietly(self.stream)
        router = self.router
        router._release(self.node_key)
        duration_ms = (time.monotonic() - self.started) * 1000
        if error is None or node_failed:
            router.breakers.of(self.node_key).record(error is None, time.monotonic())
        if error is None:
            router.fleet.performance.record(self.node_key, self.request.model,
                                            duration_ms - self.queue_ms, last)
        input_tokens, output_tokens = _usage(last)
        if error is not None and error_type is None:
            error_type = "closed early"
        await router.plugins.notify_attempt_finished(AttemptRecord(
            request_id=self.request.id, model=self.request.model,
            operation=self.request.operation, attempt=self.attempts, decision=self.decision,
            ok=error is None, error=error, error_type=error_type,
            duration_ms=(time.monotonic() - (self.attempt_started or self.started)) * 1000,
            first_chunk_ms=self.attempt_first_chunk_ms, input_tokens=input_tokens,
            output_tokens=output_tokens))
        await router.plugins.notify_finished(RequestRecord(
            request_id=self.request.id, model=self.request.model,
            operation=self.request.operation, ok=error is None, duration_ms=duration_ms,
            decision=self.decision, error=error, attempts=self.attempts,
            first_chunk_ms=self.first_chunk_ms, chunks=chunks, queue_ms=self.queue_ms,
            input_tokens=input_tokens, output_tokens=output_tokens))


async def _close_quietly(stream: Any) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # a backend that fails while closing has nothing more to tell us
            pass


def _attempt_record(request: InferenceRequest, decision: Decision, attempt: int,
                    started: float, *, error: str, error_type: str) -> AttemptRecord:
    return AttemptRecord(
        request_id=request.id, model=request.model, operation=request.operation,
        attempt=attempt, decision=decision, ok=False, error=error, error_type=error_type,
        duration_ms=(time.monotonic() - started) * 1000)


def _usage(last: Chunk | None) -> tuple[int | None, int | None]:
    """Prompt and generated token counts from Ollama's last chunk, where the backend gave them."""
    if not last:
        return None, None
    prompt, generated = last.get("prompt_eval_count"), last.get("eval_count")
    return (prompt if isinstance(prompt, int) else None,
            generated if isinstance(generated, int) else None)


def _error_type(exc: BaseException) -> str:
    """A low-cardinality name for a failure (OpenTelemetry's ``error.type``)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return str(status)
    return type(exc).__name__


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out before the first chunk"
    return str(exc) or type(exc).__name__
