"""Slots per node learnt from how nodes answer, for nodes that do not say their own (Ollama
does not publish ``OLLAMA_NUM_PARALLEL``) and were not configured one by one.

A request that waited inside the node (Ollama's ``total_duration`` counts its queue; the load,
prompt and generation durations do not) while k requests of ours were on that node means the
node serves fewer than k at once; one that did not wait means at least k; a 503 "server busy"
with k in flight means fewer than k. Only nodes whose slots come from the plugin's default
setting take the learnt number; what a node says or what is configured for it wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field

#: A wait inside the node shorter than this, or than a fifth of the request's own work, is
#: noise (scheduling, the relay), not a queue.
WAIT_NS = 50_000_000


def queued_ns(final: Mapping[str, Any] | None) -> int | None:
    """How long a request waited inside the node, from Ollama's durations; None when they are
    not all there."""
    if not final:
        return None
    parts = [final.get(name) for name in ("total_duration", "load_duration",
                                          "prompt_eval_duration", "eval_duration")]
    if not all(isinstance(p, int) for p in parts):
        return None
    total, load, prompt, generate = parts
    return int(total) - int(load) - int(prompt) - int(generate)  # type: ignore[arg-type]


@define
class CapacityBook:
    """What each node's answers say of its slots: at least ``low``, at most ``high``.
    ``on_change`` is told the node's key when either changes."""

    on_change: Callable[[str], None] = lambda key: None
    #: A lowered number is forgotten after this long: once admission holds a node to fewer
    #: requests, SOLLOL never sees it serve more, so it tries the setting again (and learns
    #: again if the node still queues: another client of it may have left meanwhile).
    forget_s: float = 600.0
    _low: dict[str, int] = field(factory=dict)
    _high: dict[str, int] = field(factory=dict)
    _high_since: dict[str, float] = field(factory=dict)

    def slots(self, key: str, setting: int, now: float | None = None) -> int:
        """The slots to assume for the node, given the plugin's default ``setting``."""
        slots = max(setting, self._low.get(key, 0))
        high = self._high.get(key)
        if high is not None and (time.monotonic() if now is None else now) \
                - self._high_since[key] > self.forget_s:
            del self._high[key], self._high_since[key]
            high = None
        return min(slots, high) if high is not None else slots

    def knows(self, key: str) -> bool:
        return key in self._low or key in self._high

    def served(self, key: str, concurrent: int, final: Mapping[str, Any] | None) -> None:
        """A request answered while ``concurrent`` of ours (itself included) were on the node."""
        waited = queued_ns(final)
        if waited is None or concurrent < 1 or final is None:
            return
        work = sum(int(final.get(n) or 0) for n in ("prompt_eval_duration", "eval_duration"))
        if waited > max(WAIT_NS, work // 5):
            self._at_most(key, max(1, concurrent - 1))
        elif concurrent > self._low.get(key, 1):
            self._low[key] = concurrent
            if self._high.get(key, concurrent) < concurrent:
                del self._high[key], self._high_since[key]  # it serves more now
            self.on_change(key)

    def refused(self, key: str, concurrent: int) -> None:
        """The node answered 503 "server busy" with ``concurrent`` of ours on it."""
        self._at_most(key, max(1, concurrent - 1))

    def _at_most(self, key: str, slots: int) -> None:
        if self._high.get(key, slots + 1) <= slots:
            self._high_since[key] = time.monotonic()  # still true: remember it longer
            return
        self._high[key], self._high_since[key] = slots, time.monotonic()
        if self._low.get(key, 0) > slots:
            self._low[key] = slots
        self.on_change(key)
