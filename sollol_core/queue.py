"""Admission: requests whose chosen node is at capacity wait here, best priority first.

Each waiter waits for one node (the one placement chose), so a queue of requests for a busy node
never holds back a request for an idle one; the bound on waiters is shared by all nodes. Priority
ages: a request's effective priority grows with the time it has waited, so a stream of
high-priority work delays low-priority work but never starves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from attrs import define, field, frozen

from sollol_core.errors import QueueFullError


@frozen
class Waiting:
    """For one decision: the requests waiting in the router's queue, per node key (placement
    adds them to a node's in-flight count: they will run there first)."""

    per_node: Mapping[str, int]


@frozen
class Running:
    """For one decision: per node key, the seconds until each request of ours running there is
    expected to end, soonest first (0 for one past its expected end): on a full node, when its
    slots free."""

    per_node: Mapping[str, tuple[float, ...]]


@define
class RunningBook:
    """When each running attempt is expected to end, per node (from its decision's
    prediction), so that the wait for a slot on a full node is predicted from what runs there,
    not from an average: a slot held by a 400-token answer frees later than one held by a
    greeting."""

    _ends: dict[str, dict[int, float]] = field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self._ends)

    def started(self, node: str, attempt: int, expected_end: float) -> None:
        self._ends.setdefault(node, {})[attempt] = expected_end

    def ended(self, node: str, attempt: int) -> None:
        ends = self._ends.get(node)
        if ends is not None and ends.pop(attempt, None) is not None and not ends:
            del self._ends[node]

    def running(self, now: float, full: Callable[[str], bool]) -> Running | None:
        """What runs on the nodes for which ``full(node)`` holds (only there does the wait for
        a slot depend on it); None when no such node runs anything of ours."""
        found = {node: tuple(sorted(max(end - now, 0.0) for end in ends.values()))
                 for node, ends in self._ends.items() if full(node)}
        return Running(found) if found else None


@define
class _Waiter:
    priority: int
    enqueued: float
    node: str
    woken: asyncio.Future[None]

    def effective(self, now: float, aging_per_s: float) -> float:
        return self.priority + (now - self.enqueued) * aging_per_s


@define
class AdmissionQueue:
    """A bounded wait list; :meth:`release` of a node wakes its waiter with the highest aged
    priority."""

    max_size: int
    #: Priority levels gained per second of waiting.
    aging_per_s: float = 0.5
    _waiters: list[_Waiter] = field(factory=list)
    #: Waiters per node, so that "does anyone wait for this node?" costs a dict lookup.
    _per_node: dict[str, int] = field(factory=dict)

    def __len__(self) -> int:
        return len(self._waiters)

    def waiting_for(self, node: str) -> int:
        return self._per_node.get(node, 0)

    def waiting(self) -> Waiting:
        return Waiting(dict(self._per_node))

    async def wait(self, priority: int, enqueued: float, node: str,
                   timeout: float | None = None) -> bool:
        """Wait for a :meth:`release` of ``node`` (True) or until ``timeout`` passes (False).
        Cancelled (the client left), the request leaves the queue."""
        if len(self._waiters) >= self.max_size:
            raise QueueFullError(f"{len(self._waiters)} requests already wait for capacity",
                                 retry_after_s=1)
        waiter = _Waiter(priority, enqueued, node, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._per_node[node] = self._per_node.get(node, 0) + 1
        try:
            await asyncio.wait_for(asyncio.shield(waiter.woken), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._remove(waiter)
            elif not waiter.woken.done():
                waiter.woken.cancel()

    def release(self, node: str) -> None:
        """A slot of ``node`` freed: let its best waiter try again."""
        if not self._per_node.get(node):
            return
        now = time.monotonic()
        best = max((w for w in self._waiters if w.node == node),
                   key=lambda w: (w.effective(now, self.aging_per_s), -w.enqueued))
        self._remove(best)
        if not best.woken.done():
            best.woken.set_result(None)

    def _remove(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        left = self._per_node[waiter.node] - 1
        if left:
            self._per_node[waiter.node] = left
        else:
            del self._per_node[waiter.node]
