"""Admission: requests that find every candidate at capacity wait here, best priority first.

Priority ages: a request's effective priority grows with the time it has waited, so a stream of
high-priority work delays low-priority work but never starves it.
"""

from __future__ import annotations

import asyncio
import time

from attrs import define, field

from sollol_core.errors import QueueFullError


@define
class _Waiter:
    priority: int
    enqueued: float
    woken: asyncio.Future[None]

    def effective(self, now: float, aging_per_s: float) -> float:
        return self.priority + (now - self.enqueued) * aging_per_s


@define
class AdmissionQueue:
    """A bounded wait list; :meth:`release` wakes the waiter with the highest aged priority."""

    max_size: int
    #: Priority levels gained per second of waiting.
    aging_per_s: float = 0.5
    _waiters: list[_Waiter] = field(factory=list)

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self, priority: int, enqueued: float, timeout: float | None = None) -> bool:
        """Wait for a :meth:`release` (True) or until ``timeout`` passes (False)."""
        if len(self._waiters) >= self.max_size:
            raise QueueFullError(f"{len(self._waiters)} requests already wait for capacity",
                                 retry_after_s=1)
        waiter = _Waiter(priority, enqueued, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.woken), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not waiter.woken.done():
                waiter.woken.cancel()

    def release(self) -> None:
        """A slot freed somewhere: let the best waiter try again."""
        if not self._waiters:
            return
        now = time.monotonic()
        best = max(self._waiters,
                   key=lambda w: (w.effective(now, self.aging_per_s), -w.enqueued))
        self._waiters.remove(best)
        if not best.woken.done():
            best.woken.set_result(None)
