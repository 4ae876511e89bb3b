"""What inference costs on an emulated node, when a test asks for it (off by default).

A real node spends time on the prompt before the first token (prefill) and then per output
token (decode); it keeps each slot's last sequence in its KV cache, so a request whose prompt
begins with what a slot already holds (the next turn of the same conversation) only evaluates
the rest, and llama.cpp (under Ollama) gives a request the free slot that shares the longest
prefix with it (when that covers half the prompt, ``sollol_core.affinity.SIMILARITY``; else the
least recently used slot).
:class:`CostModel` gives an emulator those costs, and :class:`SlotCache` those
slots, so that routers can be measured on what they are for: which node answers first.

Tokens here are words (and one marker per message), a stand-in with the right shape: a
conversation's next turn repeats the earlier turns word for word.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import field, frozen

from sollol_core.affinity import SIMILARITY, common_prefix
from sollol_core.config import not_negative, positive


@frozen
class CostModel:
    """Prefill and output costs of an emulated node (decode speed is its ``tokens_per_s``)."""

    #: Prompt tokens evaluated per second.
    prefill_tokens_per_s: float = field(default=1000.0, validator=positive)
    #: Output tokens when the request sets no ``num_predict`` (a model keeps going for a while).
    output_tokens: int = field(default=32, validator=not_negative)
    #: Whether slots keep their last sequence for the next request to reuse.
    prompt_cache: bool = True


def chat_tokens(messages: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """A chat as the node's template would render it, in tokens: a role marker, then the words
    of each message."""
    tokens: list[str] = []
    for message in messages:
        tokens.append(f"<|{message.get('role') or 'user'}|>")
        tokens.extend(str(message.get("content") or "").split())
    tokens.append("<|assistant|>")
    return tuple(tokens)


def prompt_tokens(system: str | None, prompt: str) -> tuple[str, ...]:
    """A raw or templated generate prompt, in tokens."""
    return tuple(f"{system or ''} {prompt}".split())




class SlotCache:
    """Each slot's last sequence (prompt and reply), which slots are taken, and when each was
    last used."""

    def __init__(self, count: int) -> None:
        self.memory: list[tuple[str, ...]] = [()] * count
        self.taken = [False] * count
        self.used = [0] * count
        self._clock = 0

    def take(self, tokens: Sequence[str], *, reuse: bool) -> tuple[int, int]:
        """The free slot sharing the longest prefix with ``tokens`` when that covers half the
        prompt or more, else the free slot used least recently (as llama.cpp chooses); taken.
        Also how many of ``tokens`` it already holds (0 without ``reuse``). A caller holds one
        of the emulator's slot permits, so one is free."""
        free = [i for i, taken in enumerate(self.taken) if not taken]
        shared = {i: common_prefix(self.memory[i], tokens) if reuse else 0 for i in free}
        best = max(free, key=lambda i: (shared[i], -i))
        if not tokens or shared[best] < SIMILARITY * len(tokens):
            best = min(free, key=lambda i: (self.used[i], i))
        self._clock += 1
        self.taken[best], self.used[best] = True, self._clock
        # llama.cpp always evaluates at least the prompt's last token, to get its logits
        return best, min(shared[best], max(len(tokens) - 1, 0))

    def give_back(self, slot: int, sequence: Sequence[str]) -> None:
        self.memory[slot] = tuple(sequence)
        self.taken[slot] = False
