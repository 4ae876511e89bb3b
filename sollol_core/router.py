"""The request path: admission, placement, observation, execution and fail-over. No HTTP here.

:meth:`Router.open` places a request and waits for its first chunk, failing over to the next-best
node while nothing has been sent; the returned :class:`Reply` then relays the rest. A request
whose chosen node is at capacity waits in the :class:`~sollol_core.queue.AdmissionQueue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from attrs import define, evolve, field, frozen

from sollol_core.attempt import Hold, Limits, Outcome, outcome_of
from sollol_core.breaker import Breakers
from sollol_core.chunks import fold
from sollol_core.config import Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.fleet import Fleet
from sollol_core.hookspecs import Chunk
from sollol_core.plugins import Plugins
from sollol_core.queue import AdmissionQueue
from sollol_core.types import (
    AttemptRecord,
    Decision,
    Health,
    InferenceRequest,
    NodeSnapshot,
    RequestRecord,
)

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

    def __attrs_post_init__(self) -> None:
        self.fleet.probe_listeners.append(self._probed)

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

    def _probed(self, snapshot: NodeSnapshot) -> None:
        self.breakers.probed(snapshot.endpoint.key, snapshot.health is Health.UP,
                             time.monotonic())

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

    def _must_wait(self, decision: Decision, queued: bool) -> bool:
        """Whether the decided node has no room now (or, for a newcomer, others wait for it:
        they were first). Other nodes' queues are no business of this request."""
        if decision.target is None:
            return False
        key = decision.target.key
        node = self.fleet.snapshot().node(key)
        if node is not None and node.in_flight >= node.parallel:
            return True
        return not queued and self.queue.waiting_for(key) > 0

    async def _admit(self, request: InferenceRequest, tried: frozenset[str],
                     limits: Limits) -> tuple[Decision, float]:
        """A decision whose node has room, waiting in the queue while it has none."""
        enqueued: float | None = None
        while True:
            decision = self.decide(request, exclude=tried)
            if not decision.placed or not self._must_wait(decision, enqueued is not None):
                return decision, 0.0 if enqueued is None else time.monotonic() - enqueued
            assert decision.target is not None
            enqueued = enqueued or time.monotonic()
            left = limits.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            await self.queue.wait(request.priority, enqueued, decision.target.key,
                                  timeout=min(RECHECK_S, left))

    async def open(self, request: InferenceRequest, *, exclude: frozenset[str] = frozenset(),
                   started: float | None = None, earlier: Sequence[str] = ()) -> Reply:
        """Place and start a request; returns once its first chunk is in hand. (``exclude``,
        ``started`` and ``earlier`` failures continue a request whose earlier reply failed.)"""
        started = time.monotonic() if started is None else started
        limits = Limits.of(request, self.settings, started)
        tried: set[str] = set(exclude)
        failures: list[str] = list(earlier)
        attempts_before = len(failures)
        decision: Decision | None = None
        queued_s = 0.0
        for attempt in range(attempts_before + 1, self.settings.routing.max_attempts + 1):
            try:
                decision, waited = await self._admit(request, frozenset(tried), limits)
            except BaseException as exc:  # queue full, timed out, or the client left
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
            hold = self._hold(key)
            first_chunk_s = limits.first_chunk_s + decision.startup_s
            wait_s = min(first_chunk_s, limits.deadline - attempt_started)
            try:
                # asyncio.timeout, not wait_for: no extra task per request on the hot path
                async with asyncio.timeout(wait_s):
                    first = await anext(stream)
            except StopAsyncIteration:
                first = None
            except (BackendError, OSError, TimeoutError) as exc:
                # (the loop's clock may fire a hair early: which limit was nearer decides)
                out_of_time = isinstance(exc, TimeoutError) and wait_s < first_chunk_s
                hold.release(outcome_of(exc))
                tried.add(key)
                description = _describe(exc, wait_s)
                failures.append(f"{decision.backend}: {description}")
                await _close_quietly(stream)
                await self.plugins.notify_attempt_finished(_attempt_record(
                    request, decision, attempt, attempt_started, error=description,
                    error_type=_error_type(exc)))
                if out_of_time or (isinstance(exc, BackendError) and not exc.retryable):
                    await self._finish_failed(request, decision, started, attempt,
                                              failures[-1], queued_s)
                    if out_of_time:
                        raise TimeoutError(f"the request ran longer than "
                                           f"{limits.total_s:g} s") from None
                    raise
                continue
            except BaseException as exc:  # the client left (cancelled), or a plugin's bug
                hold.release(Outcome.NEUTRAL)
                await _close_quietly(stream)
                await self.plugins.notify_attempt_finished(_attempt_record(
                    request, decision, attempt, attempt_started, error=_describe(exc),
                    error_type=_error_type(exc)))
                await self._finish_failed(request, decision, started, attempt,
                                          _describe(exc), queued_s)
                raise
            return Reply(router=self, request=request, decision=decision, stream=stream,
                         first=first, attempts=attempt, started=started, hold=hold,
                         limits=limits, queue_ms=queued_s * 1000,
                         attempt_started=attempt_started, earlier=tuple(failures))
        reason = f"all {len(failures)} attempts failed: {'; '.join(failures)}"
        await self._finish_failed(request, decision, started, len(failures), reason, queued_s)
        raise BackendError(reason)

    def _hold(self, key: str) -> Hold:
        self.breakers.of(key).started()
        self.fleet.adjust_in_flight(key, +1)
        return Hold(self, key)

    async def run(self, request: InferenceRequest) -> tuple[list[Chunk], Routing]:
        """Run a request to the end and return its chunks with where it ran: every chunk of a
        streamed request, or the one whole answer of a non-streamed one (backends may stream
        it in pieces; :func:`~sollol_core.chunks.fold` joins them as Ollama would)."""
        if request.stream:
            reply = await self.open(request)
            return [chunk async for chunk in reply], reply.routing()
        chunks, reply = await self.collect(request)
        return [fold(request.operation, chunks)], reply.routing()

    async def collect(self, request: InferenceRequest) -> tuple[list[Chunk], Reply]:
        """Every chunk of a request whose client waits for one whole answer. The client has
        nothing until the end, so a node that fails midway is replaced like one that fails
        before its first chunk (within the attempts and the time the request has)."""
        started = time.monotonic()
        tried: frozenset[str] = frozenset()
        failures: list[str] = []
        while True:
            reply = await self.open(request, exclude=tried, started=started, earlier=failures)
            reply.may_retry = reply.attempts < self.settings.routing.max_attempts
            try:
                return [chunk async for chunk in reply], reply
            except BackendError as exc:
                if not reply.retrying:
                    raise
                failures = [*reply.earlier, f"{reply.decision.backend}: {_describe(exc)}"]
            tried = tried | {reply.node_key}

    async def _finish_failed(self, request: InferenceRequest, decision: Decision | None,
                             started: float, attempts: int, error: str, queued_s: float) -> None:
        await self.plugins.notify_finished(RequestRecord(
            request_id=request.id, model=request.model, operation=request.operation, ok=False,
            duration_ms=(time.monotonic() - started) * 1000, decision=decision, error=error,
            attempts=attempts, queue_ms=queued_s * 1000))


@define
class Reply:
    """A started request: its decision, and the chunks still to come (the first one included).

    Each later chunk must come within the silence limit and the whole reply within the request's
    deadline; a healthy generation of any length is never cut while it keeps sending."""

    router: Router
    request: InferenceRequest
    decision: Decision
    stream: AsyncIterator[Chunk]
    first: Chunk | None
    attempts: int
    started: float
    hold: Hold
    limits: Limits
    queue_ms: float = 0.0
    attempt_started: float | None = None
    #: How the request's earlier attempts failed.
    earlier: tuple[str, ...] = ()
    first_chunk_ms: float = field(init=False)
    attempt_first_chunk_ms: float = field(init=False)
    _done: bool = False
    #: Set by :meth:`Router.collect`: a node fault midway may be retried (nothing was sent).
    may_retry: bool = False
    #: The reply failed by the node's fault and the router runs the request again: its end is
    #: not the request's end.
    retrying: bool = False

    def __attrs_post_init__(self) -> None:
        now = time.monotonic()
        self.first_chunk_ms = (now - self.started) * 1000
        self.attempt_first_chunk_ms = (now - (self.attempt_started or self.started)) * 1000

    @property
    def node_key(self) -> str:
        return self.hold.key

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
        outcome = Outcome.OK
        limits = self.limits
        try:
            if self.first is not None:
                chunks, last = 1, self.first
                yield self.first
            while True:
                wait_s = min(limits.silence_s, limits.deadline - time.monotonic())
                try:
                    async with asyncio.timeout(wait_s):
                        chunk = await anext(self.stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _Overdue(wait_s < limits.silence_s) from None
                chunks, last = chunks + 1, chunk
                yield chunk
        except _Overdue as exc:
            error_type = "timeout"
            if exc.total:
                outcome = Outcome.NEUTRAL  # a long request, not a sick node
                error = f"the request ran longer than {limits.total_s:g} s"
                raise TimeoutError(error) from None
            outcome = Outcome.FAULT
            error = f"the node sent nothing for {limits.silence_s:g} s"
            raise BackendError(error, retryable=False) from None
        except (GeneratorExit, asyncio.CancelledError) as exc:
            # The client leaving (generator closed, handler cancelled) is no fault of the node.
            outcome, error, error_type = Outcome.NEUTRAL, _describe(exc), "cancelled"
            raise
        except BaseException as exc:
            outcome, error, error_type = outcome_of(exc), _describe(exc), _error_type(exc)
            raise
        finally:
            await self.close(chunks, error, last, outcome=outcome, error_type=error_type)

    async def close(self, chunks: int = 0, error: str | None = None,
                    last: Chunk | None = None, *, outcome: Outcome | None = None,
                    error_type: str | None = None) -> None:
        """Release the node and report the request finished (once). Without an ``outcome``, a
        reply closed with an ``error`` says nothing about the node (the client left)."""
        if self._done:
            return
        self._done = True
        await _close_quietly(self.stream)
        if outcome is None:
            outcome = Outcome.OK if error is None else Outcome.NEUTRAL
        self.hold.release(outcome)
        self.retrying = (self.may_retry and outcome is Outcome.FAULT
                         and time.monotonic() < self.limits.deadline)
        router = self.router
        duration_ms = (time.monotonic() - self.started) * 1000
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
        if self.retrying:
            return
        await router.plugins.notify_finished(RequestRecord(
            request_id=self.request.id, model=self.request.model,
            operation=self.request.operation, ok=error is None, duration_ms=duration_ms,
            decision=self.decision, error=error, attempts=self.attempts,
            first_chunk_ms=self.first_chunk_ms, chunks=chunks, queue_ms=self.queue_ms,
            input_tokens=input_tokens, output_tokens=output_tokens))


class _Overdue(Exception):
    """A reply's next chunk did not come in time: the request's ``total`` limit, or silence."""

    def __init__(self, total: bool) -> None:
        super().__init__()
        self.total = total


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


def _describe(exc: BaseException, waited_s: float | None = None) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        within = f" within {waited_s:g} s" if waited_s is not None else ""
        return f"no first chunk{within}"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled: the client went away"
    return str(exc) or type(exc).__name__
