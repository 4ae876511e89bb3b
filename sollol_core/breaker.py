"""Per-node circuit breakers: stop sending requests to a node that keeps failing them.

closed (normal) -> open after ``failure_ratio`` of the last ``window`` attempts failed (at least
``min_samples``) -> half-open once ``cooldown_s`` has passed: one trial request goes through; its
success closes the circuit, its failure opens it again for twice as long (up to ``max_cooldown_s``).

Only the node's own faults count (it could not be reached, broke off, timed out, answered 5xx),
as in Envoy's outlier detection: a client's bad request (4xx) or a client that leaves says nothing
about the node. An attempt that ends either way still gives back the half-open trial
(:meth:`Breaker.abandon`), so a circuit never waits for a trial that is gone. Health probes count
too: a node that answers its probe after being seen down, or once its cool-down is over, rejoins
at once (:meth:`Breaker.probed`) instead of waiting for traffic to try it.
"""

from __future__ import annotations

import collections
import enum
import time

from attrs import define, field, frozen


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@frozen
class CircuitSnapshot:
    """What ``sollol status`` and the status endpoint show for one node."""

    node: str
    state: CircuitState
    failure_ratio: float
    samples: int
    next_retry_at: float | None = None


@define
class Breaker:
    window: int = 20
    failure_ratio: float = 0.5
    min_samples: int = 4
    cooldown_s: float = 5.0
    max_cooldown_s: float = 120.0
    state: CircuitState = CircuitState.CLOSED
    _outcomes: collections.deque[bool] = field(factory=lambda: collections.deque(maxlen=20))
    _retry_at: float = 0.0
    _current_cooldown: float = 0.0
    _trial_running: bool = False
    #: A probe found the node down while its circuit was open.
    _seen_down: bool = False

    def ratio(self) -> float:
        if not self._outcomes:
            return 0.0
        return sum(1 for ok in self._outcomes if not ok) / len(self._outcomes)

    def allows(self, now: float) -> bool:
        """May a request go to this node now? (Moves open -> half-open when the wait is over.)"""
        if self.state is CircuitState.OPEN and now >= self._retry_at:
            self.state = CircuitState.HALF_OPEN
            self._trial_running = False
        if self.state is CircuitState.HALF_OPEN:
            return not self._trial_running
        return self.state is CircuitState.CLOSED

    def started(self) -> None:
        if self.state is CircuitState.HALF_OPEN:
            self._trial_running = True

    def record(self, ok: bool, now: float) -> None:
        """An attempt's outcome: ``ok``, or a fault of the node."""
        self._outcomes.append(ok)
        if ok:  # a request served: the node earned back its short cool-down
            self._current_cooldown = 0.0
        if self.state is CircuitState.HALF_OPEN:
            self._trial_running = False
            if ok:
                self._close()
            else:
                self._open(now)
        elif (self.state is CircuitState.CLOSED and len(self._outcomes) >= self.min_samples
              and self.ratio() >= self.failure_ratio):
            self._open(now)

    def abandon(self) -> None:
        """An attempt ended with no verdict on the node (the client left, or the node refused
        the request itself): a half-open trial's slot is free again."""
        self._trial_running = False

    def probed(self, answered: bool, now: float) -> None:
        """A health probe's outcome. An open circuit closes when its node answers after a probe
        saw it down (it was restarted) or once the cool-down is over; a half-open one closes
        when its node answers (no request need risk the trial)."""
        if not answered:
            self._seen_down = self.state is not CircuitState.CLOSED
            return
        if self.state is CircuitState.HALF_OPEN or (
                self.state is CircuitState.OPEN and (self._seen_down or now >= self._retry_at)):
            self._close()

    def _close(self) -> None:
        # the cool-down is kept until a request succeeds: a node that answers probes but fails
        # requests again is left alone longer each time
        self.state, self._trial_running, self._seen_down = CircuitState.CLOSED, False, False
        self._outcomes.clear()

    def _open(self, now: float) -> None:
        self._current_cooldown = min(max(self._current_cooldown * 2, self.cooldown_s),
                                     self.max_cooldown_s)
        self.state, self._retry_at = CircuitState.OPEN, now + self._current_cooldown
        self._seen_down = False

    def snapshot(self, node: str, now: float) -> CircuitSnapshot:
        retry = time.time() + (self._retry_at - now) if self.state is CircuitState.OPEN else None
        return CircuitSnapshot(node, self.state, round(self.ratio(), 3), len(self._outcomes),
                               retry)


@define
class Breakers:
    """One breaker per node key, made on first use."""

    _by_node: dict[str, Breaker] = field(factory=dict)

    def of(self, node: str) -> Breaker:
        breaker = self._by_node.get(node)
        if breaker is None:
            breaker = self._by_node[node] = Breaker()
        return breaker

    def probed(self, node: str, answered: bool, now: float) -> None:
        """A health probe's outcome for ``node`` (only circuits that exist care)."""
        breaker = self._by_node.get(node)
        if breaker is not None:
            breaker.probed(answered, now)

    def blocked(self, now: float) -> frozenset[str]:
        return frozenset(k for k, b in self._by_node.items() if not b.allows(now))

    def snapshots(self) -> list[CircuitSnapshot]:
        now = time.monotonic()
        return [b.snapshot(k, now) for k, b in sorted(self._by_node.items())]
