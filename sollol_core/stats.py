"""Moving averages per (node, model) of latency and generation speed, from finished requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, field

from sollol_core.types import Performance, model_key


@define
class PerformanceBook:
    #: Weight of the newest sample in the exponential moving average.
    alpha: float = 0.3
    _entries: dict[tuple[str, str], Performance] = field(factory=dict)

    def record(self, node: str, model: str, duration_ms: float,
               final: Mapping[str, Any] | None) -> None:
        """One successful request; ``final`` is its last chunk (Ollama's metrics, if any)."""
        speed = tokens_per_second(final)
        key = (node, model_key(model))
        old = self._entries.get(key)
        if old is None:
            self._entries[key] = Performance(node, model, round(duration_ms, 3), speed, 1)
            return
        a = self.alpha
        latency = a * duration_ms + (1 - a) * old.latency_ms
        if speed is not None and old.tokens_per_s is not None:
            speed = a * speed + (1 - a) * old.tokens_per_s
        self._entries[key] = Performance(node, model, round(latency, 3),
                                         speed if speed is not None else old.tokens_per_s,
                                         old.samples + 1)

    def snapshot(self) -> tuple[Performance, ...]:
        return tuple(self._entries.values())


def tokens_per_second(final: Mapping[str, Any] | None) -> float | None:
    if not final:
        return None
    count, duration = final.get("eval_count"), final.get("eval_duration")
    if isinstance(count, int) and isinstance(duration, int) and count > 0 and duration > 0:
        return round(count / duration * 1e9, 3)
    return None
