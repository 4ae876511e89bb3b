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

from attrs import define, evolve, field, frozen

from sollol_core.affinity import AffinityIndex, PromptCache
from sollol_core.attempt import (
    Attempt,
    FirstChunkTimeout,
    Journey,
    Limits,
    Outcome,
    SilenceWatch,
    describe,
    error_type_of,
    outcome_of,
)
from sollol_core.breaker import Breakers
from sollol_core.chunks import fold
from sollol_core.config import Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.fleet import Fleet
from sollol_core.hookspecs import Chunk
from sollol_core.plugins import Plugins
from sollol_core.queue import AdmissionQueue, Running, RunningBook, Waiting
from sollol_core.types import (
    Decision,
    Health,
    InferenceRequest,
    NodeSnapshot,
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
    _guardian: asyncio.Task[None] | None = None
    #: Which nodes processed which prompt prefixes lately (see :mod:`sollol_core.affinity`).
    affinity: AffinityIndex = field(factory=AffinityIndex)
    #: When each running attempt is expected to end (see :class:`~sollol_core.queue.RunningBook`).
    running: RunningBook = field(factory=RunningBook)

    def __attrs_post_init__(self) -> None:
        self.fleet.probe_listeners.append(self._probed)
        self._size_affinity()

    def _size_affinity(self) -> None:
        self.affinity.max_entries = self.settings.routing.prompt_cache_entries
        self.affinity.ttl_s = self.settings.routing.prompt_cache_ttl_s

    @classmethod
    def create(cls, settings: Settings, plugins: Plugins | None = None) -> Router:
        """Load plugins (unless given) and build the fleet; nothing runs until :meth:`start`."""
        plugins = plugins or Plugins.load(settings)
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
        self._guardian = asyncio.create_task(self._stop_when_the_loop_ends(),
                                             name="sollol-router-guardian")
        try:
            await self.fleet.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        guardian, self._guardian = self._guardian, None
        if guardian is not None and guardian is not asyncio.current_task():
            guardian.cancel()
        await self.fleet.stop()
        stack, self._lifespan = self._lifespan, None
        if stack is not None:
            await stack.aclose()

    async def _stop_when_the_loop_ends(self) -> None:
        """Stop in order when the event loop ends with the router still running (a program
        that never calls ``stop``, like the guide's async example): ``asyncio.run`` cancels
        every task before it closes async generators, which would tear the plugins'
        lifespans down in no order, with tracebacks, and leave their processes behind."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            if self._guardian is asyncio.current_task():
                await self.stop()
            raise

    def reconfigure(self, settings: Settings) -> None:
        """Use new settings from now on (the probe schedule and every hook call read them)."""
        self.settings = settings
        self.fleet.settings = settings
        self._size_affinity()

    def _probed(self, snapshot: NodeSnapshot) -> None:
        up = snapshot.health is Health.UP
        self.breakers.probed(snapshot.endpoint.key, up, time.monotonic())
        if not up:  # it may come back restarted: believe none of its cache until it runs again
            self.affinity.forget(snapshot.endpoint.key)

    def decide(self, request: InferenceRequest, *, exclude: frozenset[str] = frozenset(),
               prefixes: tuple[tuple[int, float], ...] = ()) -> Decision:
        """Ask the placement policies; nodes in ``exclude`` or behind an open circuit are hidden;
        ``prefixes`` (the request's prompt prefixes) find the nodes that hold its prompt."""
        fleet = self.fleet.snapshot()
        hidden = exclude | self.breakers.blocked(time.monotonic())
        if hidden:
            fleet = evolve(fleet, nodes=tuple(n for n in fleet.nodes
                                              if n.endpoint.key not in hidden))
        # for this request only, and only when there is something to weigh: what nodes hold
        # of its prompt, what already waits for each node, and when what runs there ends
        cache = self.affinity.lookup(prefixes) if prefixes else None
        running = self.running.running(time.monotonic(), self._full) if self.running else None
        if cache is not None or len(self.queue) or running is not None:
            facts = dict(fleet.facts)
            if cache is not None:
                facts[PromptCache] = cache
            if len(self.queue):
                facts[Waiting] = self.queue.waiting()
            if running is not None:
                facts[Running] = running
            fleet = evolve(fleet, facts=facts)
        decision = self.plugins.place(request, fleet, self.settings)
        if decision is None:
            raise NoRouteError("no placement policy is enabled (is builtin-placement blocked?)")
        return decision

    def _full(self, key: str) -> bool:
        """Whether a request placed on node ``key`` now would wait for a slot."""
        node = self.fleet.node(key)
        return node is not None and node.in_flight + self.queue.waiting_for(key) >= node.parallel

    def _must_wait(self, decision: Decision, queued: bool) -> bool:
        """Whether the decided node has no room now (or, for a newcomer, others wait for it:
        they were first). Other nodes' queues are no business of this request."""
        if decision.target is None:
            return False
        key = decision.target.key
        node = self.fleet.node(key)  # the decision was made on a fresh snapshot just now
        if node is not None and node.in_flight >= node.parallel:
            return True
        return not queued and self.queue.waiting_for(key) > 0

    async def _admit(self, journey: Journey) -> Decision:
        """A decision whose node has room, waiting in the queue while it has none."""
        request, tried = journey.request, frozenset(journey.tried)
        enqueued: float | None = None
        try:
            while True:
                decision = self.decide(request, exclude=tried, prefixes=journey.prefixes)
                if not decision.placed or not self._must_wait(decision, enqueued is not None):
                    return decision
                assert decision.target is not None
                enqueued = enqueued or time.monotonic()
                left = journey.limits.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                await self.queue.wait(request.priority, enqueued, decision.target.key,
                                      timeout=min(RECHECK_S, left))
        finally:
            if enqueued is not None:
                journey.queued_s += time.monotonic() - enqueued

    async def open(self, request: InferenceRequest, *, exclude: frozenset[str] = frozenset(),
                   started: float | None = None, earlier: Sequence[str] = ()) -> Reply:
        """Place and start a request; returns once its first chunk is in hand. (``exclude``,
        ``started`` and ``earlier`` failures continue a request whose earlier reply failed.)"""
        journey = Journey(self, request, time.monotonic() if started is None else started,
                          set(exclude), list(earlier))
        return await self._open(journey)

    async def _open(self, journey: Journey) -> Reply:
        """One attempt after another, failing over to the next-best node while nothing has
        been sent; any failure that ends the request finishes its journey, here only."""
        try:
            for number in range(journey.attempts + 1, self.settings.routing.max_attempts + 1):
                decision = await self._admit(journey)
                journey.decided(decision, number)
                await self.plugins.notify_decision(decision, journey.request)
                if not decision.placed:
                    raise _refusal(decision.reason, journey.failures)
                attempt = Attempt(journey, decision, number)
                try:
                    async with attempt:
                        first = await attempt.first_chunk()
                except (BackendError, OSError, TimeoutError) as exc:
                    failure = journey.failed(attempt, exc)
                    out_of_time = isinstance(exc, FirstChunkTimeout) and exc.deadline
                    if out_of_time or (isinstance(exc, BackendError) and not exc.retryable):
                        journey.reason = failure
                        if out_of_time:
                            raise TimeoutError(f"the request ran longer than "
                                               f"{journey.limits.total_s:g} s") from None
                        raise
                    continue
                return Reply(attempt, first, earlier=tuple(journey.failures))
            failures = journey.failures
            raise BackendError(f"all {len(failures)} attempts failed: {'; '.join(failures)}")
        except BaseException as exc:  # queue full, timed out, refused, the client left, a bug
            await journey.fail(exc)
            raise

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
        journey = Journey(self, request)
        try:
            while True:
                reply = await self._open(journey)
                reply.may_retry = reply.attempts < self.settings.routing.max_attempts
                try:
                    return [chunk async for chunk in reply], reply
                except BackendError as exc:
                    if not reply.retrying:
                        raise
                    journey.failed(reply.attempt, exc)
        except BaseException as exc:  # (finished already, but whatever ends it, it ends once)
            await journey.fail(exc)
            raise


@define(eq=False)
class Reply:
    """A started request: its decision, and the chunks still to come (the first one included).

    A relay: its :class:`~sollol_core.attempt.Attempt` keeps the books. Each later chunk must
    come within the silence limit and the whole reply within the request's deadline; a healthy
    generation of any length is never cut while it keeps sending."""

    attempt: Attempt
    first: Chunk | None
    #: How the request's earlier attempts failed.
    earlier: tuple[str, ...] = ()
    #: Set by :meth:`Router.collect`: a node fault midway may be retried (nothing was sent).
    may_retry: bool = False
    #: The reply failed by the node's fault and the router runs the request again: its end is
    #: not the request's end.
    retrying: bool = False

    @property
    def request(self) -> InferenceRequest:
        return self.attempt.journey.request

    @property
    def decision(self) -> Decision:
        return self.attempt.decision

    @property
    def attempts(self) -> int:
        return self.attempt.number

    @property
    def node_key(self) -> str:
        return self.attempt.key

    @property
    def started(self) -> float:
        return self.attempt.journey.started

    @property
    def limits(self) -> Limits:
        return self.attempt.journey.limits

    @property
    def queue_ms(self) -> float:
        return self.attempt.journey.queued_s * 1000

    @property
    def first_chunk_ms(self) -> float:
        """From the request's start to its first chunk, queueing and fail-over included."""
        at = self.attempt.first_chunk_at
        return ((at or time.monotonic()) - self.started) * 1000

    def routing(self) -> Routing:
        target = self.decision.target
        return Routing(
            backend=target.kind if target else "sharded",
            node=target.address if target else self.decision.backend,
            reason=self.decision.reason + (
                f" (after {len(self.earlier)} failed attempt{'s' if len(self.earlier) > 1 else ''}"
                f": {'; '.join(self.earlier)})" if self.earlier else ""),
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
        limits, stream = self.limits, self.attempt.stream
        assert stream is not None
        watch = SilenceWatch(limits)
        try:
            if self.first is not None:
                chunks, last = 1, self.first
                yield self.first
            while True:
                watch.waiting()
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError as cancelled:
                    if watch.overdue(cancelled):
                        raise _Overdue(watch.fired == "total") from None
                    raise
                finally:
                    watch.got()
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
        except BaseException as exc:  # a node's failure, the client leaving, a plugin's bug
            outcome, error, error_type = outcome_of(exc), describe(exc), error_type_of(exc)
            raise
        finally:
            watch.stop()
            await self.close(chunks, error, last, outcome=outcome, error_type=error_type)

    async def close(self, chunks: int = 0, error: str | None = None,
                    last: Chunk | None = None, *, outcome: Outcome | None = None,
                    error_type: str | None = None) -> None:
        """End the attempt (and, unless it runs again, the request), once. Without an
        ``outcome``, a reply closed with an ``error`` says nothing about the node (the client
        left)."""
        attempt = self.attempt
        if attempt.ended:
            return
        if outcome is None:
            outcome = Outcome.OK if error is None else Outcome.NEUTRAL
        if error is not None and error_type is None:
            error_type = "closed early"
        self.retrying = (self.may_retry and outcome is Outcome.FAULT
                         and time.monotonic() < self.limits.deadline)
        await attempt.end(outcome, error, error_type, last=last, chunks=chunks,
                          request_ends=not self.retrying)


class _Overdue(Exception):
    """A reply's next chunk did not come in time: the request's ``total`` limit, or silence."""

    def __init__(self, total: bool) -> None:
        super().__init__()
        self.total = total


def _refusal(reason: str, failures: Sequence[str]) -> Exception:
    """No node for the request: a refusal, or the last straw after failed attempts."""
    if failures:
        return BackendError(f"{reason}; earlier attempts: {'; '.join(failures)}")
    return NoRouteError(reason)
