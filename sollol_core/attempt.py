"""One request's bookkeeping, and one attempt's: what an attempt's outcome says about its node,
the request's time limits, the claim an attempt holds on its node, and the records observers get.

A :class:`Journey` is one request's way through the router over all its attempts; it reports the
request's one :class:`~sollol_core.types.RequestRecord` (:meth:`Journey.finish`, once). An
:class:`Attempt` is one try on one decided node, used as ``async with``: entering claims the node
(its in-flight count, its queue slot, its circuit's trial), and :meth:`Attempt.end` gives the
claim back and reports the attempt's one :class:`~sollol_core.types.AttemptRecord`, however it
ends. An exception leaving the ``async with`` block ends the attempt with that failure; a clean
exit leaves it running for the :class:`~sollol_core.router.Reply` that relays the rest.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from attrs import define, evolve, field, frozen

from sollol_core.affinity import prefixes as prompt_prefixes
from sollol_core.config import Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.hookspecs import Chunk
from sollol_core.types import AttemptRecord, Decision, InferenceRequest, RequestRecord

if TYPE_CHECKING:
    from sollol_core.router import Router


class Outcome(enum.Enum):
    """What an attempt says about its node, for the node's circuit breaker."""

    OK = "ok"
    #: The node failed: unreachable, broke off, timed out, silent, or answered 5xx.
    FAULT = "fault"
    #: No verdict: the client left, or the node refused the request itself (4xx).
    NEUTRAL = "neutral"


def outcome_of(exc: BaseException) -> Outcome:
    """Whether a failure is the node's fault (Envoy's outlier detection counts the same)."""
    if isinstance(exc, BackendError):
        return Outcome.FAULT if exc.status is None or exc.status >= 500 else Outcome.NEUTRAL
    if isinstance(exc, OSError | TimeoutError):
        return Outcome.FAULT
    return Outcome.NEUTRAL


@frozen
class Limits:
    """A request's time limits, from the routing settings and its own ``timeout_s``."""

    #: When the whole request must be over (``time.monotonic()``).
    deadline: float
    #: The longest an attempt may wait for its first chunk (before the decision's start-up).
    first_chunk_s: float
    #: The longest a node may stay silent between chunks.
    silence_s: float
    total_s: float

    @classmethod
    def of(cls, request: InferenceRequest, settings: Settings, started: float) -> Limits:
        routing = settings.routing
        total = request.timeout_s or routing.request_timeout_s
        first = max(routing.first_token_timeout_s, request.timeout_s or 0.0)
        return cls(started + total, first, routing.silence_timeout_s, total)


class SilenceWatch:
    """A reply's limits between chunks, on one timer per reply rather than one per chunk
    (``asyncio.timeout`` around every chunk's wait arms and cancels a timer per token).

    Only time spent waiting on the node counts: while the reply's reader writes to a slow
    client, the node is not silent. The timer, when it fires, looks at how long the current
    wait has lasted and cancels the waiting task only when a limit has passed; otherwise it
    sets itself for the earliest moment one could.
    """

    __slots__ = ("_cancelling", "_limits", "_since", "_task", "_timer", "fired")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._since: float | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._timer: asyncio.TimerHandle | None = None
        #: Which limit ended the wait: "total" (the request's deadline) or "silence".
        self.fired: str | None = None

    def waiting(self) -> None:
        """The reader starts waiting for the node's next chunk."""
        now = self._since = time.monotonic()
        task = self._task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        if self._timer is None:
            self._arm(now)

    def got(self) -> None:
        """The wait is over (a chunk, the end, or a failure)."""
        self._since = None

    def overdue(self, exc: asyncio.CancelledError) -> bool:
        """Whether ``exc``, raised in the wait, is this watch's doing (not the client's)."""
        task = self._task
        return (self.fired is not None and task is not None
                and task.uncancel() <= self._cancelling)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, since: float) -> None:
        limits = self._limits
        limit = min(since + limits.silence_s, limits.deadline)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(limit - time.monotonic(), 0.0), self._check)

    def _check(self) -> None:
        self._timer = None
        since, now = self._since, time.monotonic()
        if since is None:  # the reader is busy elsewhere: a full silence from now at the least
            self._arm(now)
            return
        limits = self._limits
        if now < min(since + limits.silence_s, limits.deadline):
            self._arm(since)  # a chunk came since this timer was set; (or it fired early)
            return
        self.fired = "total" if limits.deadline <= since + limits.silence_s else "silence"
        if self._task is not None:
            self._task.cancel()


class FirstChunkTimeout(TimeoutError):
    """An attempt's first chunk did not come in time. ``deadline``: the request's own time
    limit was nearer than the first-chunk limit (no other node can do better)."""

    def __init__(self, message: str, *, deadline: bool) -> None:
        super().__init__(message)
        self.deadline = deadline


@define(eq=False)
class Journey:
    """One request's way through the router, over all its attempts (and the re-runs of
    :meth:`~sollol_core.router.Router.collect`): its limits, the nodes it tried and how they
    failed, its time in the queue, and its one request record."""

    router: Router
    request: InferenceRequest
    started: float = field(factory=time.monotonic)
    #: Nodes not to place it on again.
    tried: set[str] = field(factory=set)
    #: How its earlier attempts failed, one line each.
    failures: list[str] = field(factory=list)
    limits: Limits = field(init=False)
    #: The attempts so far (a placement refused counts: it was this request's try).
    attempts: int = field(init=False)
    #: The latest decision.
    decision: Decision | None = None
    queued_s: float = 0.0
    #: Why it failed, when an attempt's failure ended it (else what it raised says why).
    reason: str | None = None
    finished: bool = False
    #: The prompt's prefix hashes (for the prompt-cache index), once per request.
    prefixes: tuple[tuple[int, float], ...] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.limits = Limits.of(self.request, self.router.settings, self.started)
        self.attempts = len(self.failures)
        self.prefixes = (prompt_prefixes(self.request)
                         if self.router.settings.routing.prompt_cache_entries else ())

    def decided(self, decision: Decision, attempt: int) -> None:
        self.decision, self.attempts = decision, attempt

    def failed(self, attempt: Attempt, exc: BaseException) -> str:
        """An attempt failed by its node: the node is not tried again. Returns the failure."""
        self.tried.add(attempt.key)
        if isinstance(exc, BackendError):  # what the backend says this failure rules out
            self.tried.update(exc.exclude)
        failure = f"{attempt.decision.backend}: {describe(exc)}"
        self.failures.append(failure)
        return failure

    async def fail(self, exc: BaseException) -> None:
        """The request failed with ``exc`` (a no-op once finished)."""
        await self.finish(self.reason or describe(exc))

    async def finish(self, error: str | None = None, *, chunks: int = 0,
                     last: Chunk | None = None, first_chunk_at: float | None = None) -> None:
        """Report the request finished: the only place its record is made, once."""
        if self.finished:
            return
        self.finished = True
        request = self.request
        input_tokens, output_tokens = usage(last)
        await self.router.plugins.notify_finished(RequestRecord(
            request_id=request.id, model=request.model, operation=request.operation,
            ok=error is None, duration_ms=(time.monotonic() - self.started) * 1000,
            decision=self.decision, error=error, attempts=self.attempts,
            first_chunk_ms=None if first_chunk_at is None
            else (first_chunk_at - self.started) * 1000,
            chunks=chunks, queue_ms=self.queued_s * 1000, input_tokens=input_tokens,
            output_tokens=output_tokens))


@define(eq=False)
class Attempt:
    """One try of a request on one decided node. Entered (``async with``), it claims the node;
    :meth:`end` gives the claim back with the attempt's outcome and reports the attempt, exactly
    once however the attempt ends. It holds nothing until entered."""

    journey: Journey
    decision: Decision
    #: Its number within the request, from 1.
    number: int
    key: str = field(init=False)
    started: float = field(init=False, default=0.0)
    stream: AsyncIterator[Chunk] | None = field(init=False, default=None)
    #: When its first chunk came (``time.monotonic()``).
    first_chunk_at: float | None = field(init=False, default=None)
    ended: bool = field(init=False, default=True)
    #: Requests of ours on the node once this one joined them (itself included).
    concurrent: int = field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        target = self.decision.target
        self.key = target.key if target else self.decision.backend

    async def __aenter__(self) -> Attempt:
        router = self.journey.router
        router.breakers.of(self.key).started()
        router.fleet.adjust_in_flight(self.key, +1)
        node = router.fleet.node(self.key)
        self.concurrent = node.in_flight if node is not None else 1
        self.started, self.ended = time.monotonic(), False
        if self.decision.service_s is not None:
            router.running.started(self.key, id(self), self.started + self.decision.service_s)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            await self.fail(exc)

    @property
    def first_chunk_ms(self) -> float | None:
        at = self.first_chunk_at
        return None if at is None else (at - self.started) * 1000

    async def first_chunk(self) -> Chunk | None:
        """Start the request on the node and wait for its first chunk (None: there is none)."""
        journey, decision = self.journey, self.decision
        plugins, request, limits = journey.router.plugins, journey.request, journey.limits
        headers = plugins.attempt_headers(request, decision, self.number)
        # Only traced attempts pay for a copy of the request.
        if headers:
            request = evolve(request, upstream_headers=headers)
        stream = self.stream = plugins.execute(request, decision, journey.router.settings)
        if stream is None:
            raise NoRouteError(f"no plugin can run requests on {decision.backend}")
        limit_s = limits.first_chunk_s + decision.startup_s
        wait_s = min(limit_s, limits.deadline - self.started)
        try:
            # asyncio.timeout, not wait_for: no extra task per request on the hot path
            async with asyncio.timeout(wait_s):
                first = await anext(stream)
        except StopAsyncIteration:
            first = None
        except TimeoutError as exc:
            # (the loop's clock may fire a hair early: which limit was nearer decides)
            raise FirstChunkTimeout(str(exc) or f"no first chunk within {wait_s:g} s",
                                    deadline=wait_s < limit_s) from None
        self.first_chunk_at = time.monotonic()
        return first

    async def fail(self, exc: BaseException) -> None:
        """End with the failure ``exc`` (the client leaving is no fault of the node)."""
        await self.end(outcome_of(exc), describe(exc), error_type_of(exc))

    async def end(self, outcome: Outcome, error: str | None = None,
                  error_type: str | None = None, *, last: Chunk | None = None, chunks: int = 0,
                  request_ends: bool = False) -> None:
        """Give the node back and report the attempt (once; later calls do nothing); with
        ``request_ends``, report the request finished too."""
        if self.ended:
            return
        self.ended = True
        journey = self.journey
        router, request = journey.router, journey.request
        # The claim first, and with no await before it: nothing can keep it from going back.
        router.fleet.adjust_in_flight(self.key, -1)
        router.running.ended(self.key, id(self))
        router.queue.release(self.key)
        breaker = router.breakers.of(self.key)
        if outcome is Outcome.NEUTRAL:
            breaker.abandon()
        else:
            breaker.record(outcome is Outcome.OK, time.monotonic())
        if self.stream is not None:
            await close_quietly(self.stream)
        duration_ms = (time.monotonic() - self.started) * 1000
        if error is None:
            router.fleet.performance.record(self.key, request.model, duration_ms, last)
            router.fleet.capacity.served(self.key, self.concurrent, last)
            if journey.prefixes and self.decision.target is not None:
                node = router.fleet.node(self.key)
                router.affinity.record(self.key, journey.prefixes,
                                       slots=node.parallel if node is not None else 1)
        elif error_type == "503":  # "server busy": the node is past what it serves at once
            router.fleet.capacity.refused(self.key, self.concurrent)
        input_tokens, output_tokens = usage(last)
        await router.plugins.notify_attempt_finished(AttemptRecord(
            request_id=request.id, model=request.model, operation=request.operation,
            attempt=self.number, decision=self.decision, ok=error is None, error=error,
            error_type=error_type, duration_ms=duration_ms, first_chunk_ms=self.first_chunk_ms,
            input_tokens=input_tokens, output_tokens=output_tokens))
        if request_ends:
            await journey.finish(error, chunks=chunks, last=last,
                                 first_chunk_at=self.first_chunk_at)


async def close_quietly(stream: Any) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # a backend that fails while closing has nothing more to tell us
            pass


def usage(last: Chunk | None) -> tuple[int | None, int | None]:
    """Prompt and generated token counts from Ollama's last chunk, where the backend gave them."""
    if not last:
        return None, None
    prompt, generated = last.get("prompt_eval_count"), last.get("eval_count")
    return (prompt if isinstance(prompt, int) else None,
            generated if isinstance(generated, int) else None)


def error_type_of(exc: BaseException) -> str:
    """A low-cardinality name for a failure (OpenTelemetry's ``error.type``)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"  # the client left
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return str(status)
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no first chunk"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled: the client went away"
    return str(exc) or type(exc).__name__
