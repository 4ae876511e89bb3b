"""Which nodes hold which prompts in their cache: a bounded index from prompt-prefix hashes to the
nodes that hold them.

A node keeps the sequence it last processed in each slot (llama.cpp's prompt cache, under
Ollama too), so the next turn of a conversation evaluates only what is new on the node that ran
the turn before, as long as that slot has not been given to another prompt since. The index
remembers, for each prefix of each request answered (the messages so far, or a raw prompt's
256-character blocks), the nodes that hold it; and, per node, the sequences its slots hold,
replaced as the node replaces them (llama.cpp gives a prompt the slot sharing its longest prefix
when that covers half the prompt, else the least recently used slot), so that a node with two
slots is not believed to hold twenty conversations. A new request asks, per node, for the
longest prefix of its own that node holds: those tokens it need not evaluate again. Entries
older than ``ttl_s`` (the node has unloaded the model by then) are ignored, and the least
recently recorded prefixes are dropped beyond ``max_entries``, so memory stays bounded (about
200 bytes an entry).

What it finds reaches placement as a frozen :class:`PromptCache` in the fleet snapshot, so that
placement stays a pure function of its arguments; prediction then weighs the tokens saved
against each node's load: affinity is never absolute.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence

from attrs import define, field, frozen

from sollol_core.types import InferenceRequest

#: A raw prompt's prefixes: one per this many characters.
BLOCK_CHARS = 256
#: Characters per token, to turn a prefix's length into tokens without a tokenizer.
CHARS_PER_TOKEN = 4.0


@frozen
class PromptCache:
    """For one request: how many of its prompt tokens each node probably holds (node key ->
    tokens), and the prompt's estimated size."""

    cached_tokens: Mapping[str, float]
    prompt_tokens: float


def prefixes(request: InferenceRequest) -> tuple[tuple[int, float], ...]:
    """(hash, tokens up to there) for each prefix of the request's prompt, shortest first."""
    body = request.body
    found: list[tuple[int, float]] = []
    seed = hash((request.model, body.get("system") or ""))
    chars = len(str(body.get("system") or ""))
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        running = seed
        for message in messages:
            if not isinstance(message, dict):
                break
            content = str(message.get("content") or "")
            running = hash((running, message.get("role"), content))
            chars += len(content)
            found.append((running, chars / CHARS_PER_TOKEN))
        return tuple(found)
    prompt = str(body.get("prompt") or "")
    running = seed
    for start in range(0, len(prompt) - BLOCK_CHARS + 1, BLOCK_CHARS):
        running = hash((running, prompt[start:start + BLOCK_CHARS]))
        found.append((running, (chars + start + BLOCK_CHARS) / CHARS_PER_TOKEN))
    return tuple(found)


#: A slot is chosen for what it holds only when that covers at least this share of the prompt;
#: else the least recently used one (llama.cpp's ``--slot-prompt-similarity``, whose default was
#: 0.5; llama-server b11434 defaults to 0.10). The Ollama emulator's slots follow the same rule.
SIMILARITY = 0.5


@define
class _Slots:
    """One node's slots: the prefix hashes of the sequence each holds, and when each was used."""

    held: list[tuple[int, ...]] = field(factory=list)
    used: list[float] = field(factory=list)

    def replace(self, digests: tuple[int, ...], covers: Callable[[int], bool], slots: int,
                now: float) -> tuple[int, ...]:
        """Put ``digests`` in the slot the node would give it; what that slot held before (and
        any slot beyond ``slots``) is returned, dropped. ``covers(n)``: whether ``n`` shared
        prefixes are half the prompt."""
        dropped: list[int] = []
        while len(self.held) > max(slots, 1):  # the node has fewer slots than it had
            oldest = self.used.index(min(self.used))
            dropped += self.held.pop(oldest)
            self.used.pop(oldest)
        shared = [common_prefix(sequence, digests) for sequence in self.held]
        best = max(range(len(shared)), key=shared.__getitem__, default=None)
        if best is None or not covers(shared[best]):
            if len(self.held) < max(slots, 1):  # an empty slot
                self.held.append(digests)
                self.used.append(now)
                return tuple(dropped)
            best = self.used.index(min(self.used))
        dropped += self.held[best]
        self.held[best], self.used[best] = digests, now
        return tuple(dropped)

    def holding(self) -> set[int]:
        return {digest for sequence in self.held for digest in sequence}


def common_prefix(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    count = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        count += 1
    return count


@define
class AffinityIndex:
    """Prefix hash -> {node key: when it processed that prefix}, least recently recorded
    dropped first; and per node the sequences its slots hold."""

    max_entries: int = 200_000
    ttl_s: float = 300.0
    _entries: OrderedDict[int, dict[str, float]] = field(factory=OrderedDict)
    _slots: dict[str, _Slots] = field(factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, node: str, steps: tuple[tuple[int, float], ...], slots: int = 1,
               now: float | None = None) -> None:
        """``node``, which has ``slots`` slots, has just processed a prompt with these
        prefixes; the sequence its slot held before is gone from it."""
        if not steps:
            return
        now = time.monotonic() if now is None else now
        entries = self._entries
        digests = tuple(digest for digest, _ in steps)
        half = steps[-1][1] * SIMILARITY
        node_slots = self._slots.setdefault(node, _Slots())
        dropped = node_slots.replace(digests, lambda n: n > 0 and steps[n - 1][1] >= half,
                                     slots, now)
        if dropped:
            kept = node_slots.holding()
            for digest in dropped:
                holders = entries.get(digest)
                if holders is not None and digest not in kept:
                    holders.pop(node, None)
                    if not holders:
                        del entries[digest]
        for digest in digests:
            holders = entries.get(digest)
            if holders is None:
                entries[digest] = {node: now}
            else:
                holders[node] = now
                entries.move_to_end(digest)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def forget(self, node: str) -> None:
        """``node`` lost its cache (restarted, unloaded the model, left the fleet)."""
        node_slots = self._slots.pop(node, None)
        if node_slots is None:
            return
        entries = self._entries
        for digest in node_slots.holding():
            holders = entries.get(digest)
            if holders is not None:
                holders.pop(node, None)
                if not holders:
                    del entries[digest]

    def lookup(self, steps: tuple[tuple[int, float], ...],
               now: float | None = None) -> PromptCache | None:
        """Per node, the tokens of the longest prefix it holds, processed within ``ttl_s``;
        None when no node holds any (the common case of a first turn costs one lookup per
        prefix)."""
        if not steps or not self._entries:
            return None
        horizon = (time.monotonic() if now is None else now) - self.ttl_s
        cached: dict[str, float] = {}
        entries = self._entries
        for digest, tokens in reversed(steps):  # longest first: a node's best is its first
            holders = entries.get(digest)
            if holders:
                for node, when in holders.items():
                    if when >= horizon and node not in cached:
                        cached[node] = tokens
        return PromptCache(cached, steps[-1][1]) if cached else None
