"""Per-node circuit breakers: stop sending requests to a node that keeps failing them.

closed (normal) -> open after ``failure_ratio`` of the last ``window`` attempts failed (at least
``min_samples``) -> half-open once ``cooldown_s`` has passed: one trial request goes through; its
success closes the circuit, its failure opens it again for twice as long (up to ``max_cooldown_s``).
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
        self._outcomes.append(ok)
        if self.state is CircuitState.HALF_OPEN:
            self._trial_running = False
            if ok:
                self.state, self._current_cooldown = CircuitState.CLOSED, 0.0
                self._outcomes.clear()
            else:
                self._open(now)
        elif (self.state is CircuitState.CLOSED and len(self._outcomes) >= self.min_samples
              and self.ratio() >= self.failure_ratio):
            self._open(now)

    def _open(self, now: float) -> None:
        self._current_cooldown = min(max(self._current_cooldown * 2, self.cooldown_s),
                                     self.max_cooldown_s)
        self.state, self._retry_at = CircuitState.OPEN, now + self._current_cooldown

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

    def blocked(self, now: float) -> frozenset[str]:
        return frozenset(k for k, b in self._by_node.items() if not b.allows(now))

    def snapshots(self) -> list[CircuitSnapshot]:
        now = time.monotonic()
        return [b.snapshot(k, now) for k, b in sorted(self._by_node.items())]
