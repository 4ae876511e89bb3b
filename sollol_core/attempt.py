"""One attempt's bookkeeping: what its outcome says about the node, the request's time limits,
and the claim an attempt holds on its node until it ends."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from attrs import define, frozen

from sollol_core.config import Settings
from sollol_core.errors import BackendError
from sollol_core.types import InferenceRequest

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


@define
class Hold:
    """One attempt's claim on a node: its in-flight count, its queue slot and its circuit's
    trial. Given back exactly once, with the attempt's outcome, however the attempt ends."""

    router: Router
    key: str
    released: bool = False

    def release(self, outcome: Outcome) -> None:
        if self.released:
            return
        self.released = True
        router = self.router
        router.fleet.adjust_in_flight(self.key, -1)
        router.queue.release(self.key)
        breaker = router.breakers.of(self.key)
        if outcome is Outcome.NEUTRAL:
            breaker.abandon()
        else:
            breaker.record(outcome is Outcome.OK, time.monotonic())


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
