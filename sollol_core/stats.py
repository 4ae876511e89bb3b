"""Moving averages per (node, model) of latency and generation speed, from finished requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, field

from sollol_core.types import Performance, model_key

#: A ``load_duration`` above this was a load from disk, not a model already in memory.
COLD_LOAD_NS = 100_000_000


@define
class PerformanceBook:
    #: Weight of the newest sample in the exponential moving average.
    alpha: float = 0.3
    _entries: dict[tuple[str, str], Performance] = field(factory=dict)

    def record(self, node: str, model: str, duration_ms: float,
               final: Mapping[str, Any] | None) -> None:
        """One successful request; ``final`` is its last chunk (Ollama's metrics, if any)."""
        key = (node, model_key(model))
        old = self._entries.get(key)
        speed = tokens_per_second(final)
        prefill = _rate(final, "prompt_eval_count", "prompt_eval_duration")
        load = final.get("load_duration") if final else None
        load_ms = load / 1e6 if isinstance(load, int) and load > COLD_LOAD_NS else None
        output = final.get("eval_count") if final else None
        output_tokens = float(output) if isinstance(output, int) else None
        if old is None:
            self._entries[key] = Performance(node, model, round(duration_ms, 3), speed, 1,
                                             prefill, load_ms, output_tokens)
            return
        a = self.alpha

        def mix(new: float | None, known: float | None) -> float | None:
            if new is None or known is None:
                return known if new is None else new
            return a * new + (1 - a) * known

        self._entries[key] = Performance(
            node, model, round(a * duration_ms + (1 - a) * old.latency_ms, 3),
            mix(speed, old.tokens_per_s), old.samples + 1,
            mix(prefill, old.prefill_tokens_per_s), mix(load_ms, old.load_ms),
            mix(output_tokens, old.output_tokens))

    def snapshot(self) -> tuple[Performance, ...]:
        return tuple(self._entries.values())


def _rate(final: Mapping[str, Any] | None, count_key: str, ns_key: str) -> float | None:
    if not final:
        return None
    count, duration = final.get(count_key), final.get(ns_key)
    if isinstance(count, int) and isinstance(duration, int) and count > 0 and duration > 0:
        return round(count / duration * 1e9, 3)
    return None


def tokens_per_second(final: Mapping[str, Any] | None) -> float | None:
    return _rate(final, "eval_count", "eval_duration")
