"""What the gateway remembers of recent traffic, for its dashboard: the last routing decisions
with their reasons and outcomes, and per-second request and latency series.

:class:`Observatory` is an observer plugin (it implements the observation hooks) holding plain
data; nothing here does I/O or knows about HTTP. Memory is bounded: ``keep`` decisions and
``window_s`` one-second buckets.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from attrs import define, field

from sollol_core.hookspecs import hookimpl
from sollol_core.types import AttemptRecord, Decision, InferenceRequest, RequestRecord


def outcome_of(record: RequestRecord) -> str:
    """``ok``; ``error`` when it failed after reaching a node; ``refused`` when it never reached
    one (no node for it, queue full, timed out waiting)."""
    if record.ok:
        return "ok"
    ran = (record.decision is not None and record.decision.placed) or record.attempts > 1
    return "error" if ran else "refused"


@define
class DecisionEntry:
    """One routing decision as the dashboard lists it; the outcome is filled in when its attempt
    (or, for a refusal, its request) ends."""

    at: float
    request_id: str
    model: str
    operation: str
    policy: str
    reason: str
    placed: bool
    backend: str
    #: The whole-model target's address, or empty for a shard plan and a refusal.
    node: str = ""
    #: A shard plan's workers, in order, with the layers each holds (``layers`` may be unknown).
    shards: tuple[tuple[str, int | None], ...] = ()
    candidates: tuple[tuple[str, float, str], ...] = ()
    outcome: str = "running"
    error: str = ""
    duration_ms: float | None = None
    #: The decision itself, to match the attempt that ran it (not shown).
    decision: Decision | None = field(default=None, eq=False, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at, "request_id": self.request_id, "model": self.model,
            "operation": self.operation, "policy": self.policy, "reason": self.reason,
            "placed": self.placed, "backend": self.backend, "node": self.node,
            "shards": [{"worker": w, "layers": n} for w, n in self.shards],
            "candidates": [{"node": k, "score": s, "note": n} for k, s, n in self.candidates],
            "outcome": self.outcome, "error": self.error, "duration_ms": self.duration_ms,
        }


@define
class Bucket:
    """The requests that finished within one second."""

    second: int
    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0


@define(eq=False)
class Observatory:
    """Recent decisions and rolling per-second series, fed by the observation hooks."""

    keep: int = 50
    window_s: int = 300
    clock: Callable[[], float] = time.time
    decisions: collections.deque[DecisionEntry] = field(init=False)
    buckets: collections.deque[Bucket] = field(init=False)
    #: Totals since start: requests, ok, errors, refused, input and output tokens.
    totals: dict[str, int] = field(factory=lambda: dict.fromkeys(
        ("requests", "ok", "errors", "refused", "input_tokens", "output_tokens"), 0))
    #: Called after every change (the dashboard's event streams wake on it).
    listeners: list[Callable[[], None]] = field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.decisions = collections.deque(maxlen=self.keep)
        self.buckets = collections.deque(maxlen=self.window_s)

    # -- the observation hooks -------------------------------------------------------------

    @hookimpl
    def sollol_on_decision(self, decision: Decision, request: InferenceRequest) -> None:
        shards: tuple[tuple[str, int | None], ...] = ()
        if decision.plan is not None:
            layers: list[int | None] = list(decision.plan.layers)
            layers += [None] * (len(decision.plan.workers) - len(layers))
            shards = tuple((w.address, n) for w, n in zip(decision.plan.workers, layers,
                                                          strict=False))
        self.decisions.append(DecisionEntry(
            at=decision.decided_at, request_id=decision.request_id, model=decision.model,
            operation=request.operation.value, policy=decision.policy, reason=decision.reason,
            placed=decision.placed, backend=decision.backend,
            node=decision.target.address if decision.target else "", shards=shards,
            candidates=tuple((c.endpoint.key, round(c.score, 3), c.note)
                             for c in decision.candidates[:5]),
            outcome="running" if decision.placed else "refused", decision=decision))
        self._changed()

    @hookimpl
    def sollol_on_attempt_finished(self, record: AttemptRecord) -> None:
        entry = self._entry_of(record.decision)
        if entry is not None:
            entry.outcome = "ok" if record.ok else "failed"
            entry.error = record.error or ""
            entry.duration_ms = round(record.duration_ms, 1)
            self._changed()

    @hookimpl
    def sollol_on_request_finished(self, record: RequestRecord) -> None:
        outcome = outcome_of(record)
        self.totals["requests"] += 1
        self.totals[{"ok": "ok", "error": "errors"}.get(outcome, "refused")] += 1
        self.totals["input_tokens"] += record.input_tokens or 0
        self.totals["output_tokens"] += record.output_tokens or 0
        if record.decision is not None and not record.decision.placed:
            entry = self._entry_of(record.decision)
            if entry is not None:
                entry.error = record.error or ""
        bucket = self._bucket(int(self.clock()))
        bucket.requests += 1
        bucket.errors += 0 if record.ok else 1
        bucket.latency_sum_ms += record.duration_ms
        bucket.latency_max_ms = max(bucket.latency_max_ms, record.duration_ms)
        self._changed()

    # -- reading -------------------------------------------------------------------------------

    def recent(self) -> list[dict[str, Any]]:
        """The kept decisions, newest first."""
        return [entry.as_json() for entry in reversed(self.decisions)]

    def series(self) -> dict[str, Any]:
        """Requests, errors, mean and worst latency for each of the last ``window_s`` seconds
        (oldest first; seconds without a finished request have zero requests and no latency)."""
        end = int(self.clock())
        start = end - self.window_s + 1
        by_second = {b.second: b for b in self.buckets if b.second >= start}
        requests, errors, mean, worst = [], [], [], []
        for second in range(start, end + 1):
            b = by_second.get(second)
            requests.append(b.requests if b else 0)
            errors.append(b.errors if b else 0)
            mean.append(round(b.latency_sum_ms / b.requests, 1) if b and b.requests else None)
            worst.append(round(b.latency_max_ms, 1) if b and b.requests else None)
        return {"start": start, "step_s": 1, "requests": requests, "errors": errors,
                "latency_ms_mean": mean, "latency_ms_max": worst}

    def rate(self, seconds: int = 10) -> float:
        """Finished requests per second over the last ``seconds`` full seconds."""
        end = int(self.clock())
        count = sum(b.requests for b in self.buckets if end - seconds <= b.second < end)
        return count / max(seconds, 1)

    # -- internals -----------------------------------------------------------------------------

    def _entry_of(self, decision: Decision) -> DecisionEntry | None:
        for entry in reversed(self.decisions):
            if entry.decision is decision:
                return entry
        return None

    def _bucket(self, second: int) -> Bucket:
        if self.buckets and self.buckets[-1].second == second:
            return self.buckets[-1]
        if self.buckets and self.buckets[-1].second > second:  # the clock stepped back
            return self.buckets[-1]
        bucket = Bucket(second)
        self.buckets.append(bucket)
        return bucket

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()
