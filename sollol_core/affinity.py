"""Which nodes hold which prompts in their cache: a bounded index from prompt-prefix hashes to the
nodes that last processed them.

A node keeps the sequence it last processed in each slot (llama.cpp's prompt cache, under
Ollama too), so the next turn of a conversation evaluates only what is new on the node that ran
the turn before. The index remembers, for each prefix of each request answered (the messages so
far, or a raw prompt's 256-character blocks), the nodes that processed it and when. A new
request asks, per node, for the longest prefix of its own that node processed lately: those
tokens it need not evaluate again. Entries older than ``ttl_s`` (the node has unloaded or
reused that slot by then) are ignored, and the least recently recorded prefixes are dropped
beyond ``max_entries``, so memory stays bounded (about 200 bytes an entry).

What it finds reaches placement as a frozen :class:`PromptCache` in the fleet snapshot, so that
placement stays a pure function of its arguments; prediction then weighs the tokens saved
against each node's load: affinity is never absolute.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping

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


@define
class AffinityIndex:
    """Prefix hash -> {node key: when it processed that prefix}, least recently recorded
    dropped first."""

    max_entries: int = 200_000
    ttl_s: float = 300.0
    _entries: OrderedDict[int, dict[str, float]] = field(factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, node: str, steps: tuple[tuple[int, float], ...],
               now: float | None = None) -> None:
        """``node`` has just processed a prompt with these prefixes."""
        now = time.monotonic() if now is None else now
        entries = self._entries
        for digest, _ in steps:
            holders = entries.get(digest)
            if holders is None:
                entries[digest] = {node: now}
            else:
                holders[node] = now
                entries.move_to_end(digest)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def lookup(self, steps: tuple[tuple[int, float], ...],
               now: float | None = None) -> PromptCache | None:
        """Per node, the tokens of the longest prefix it processed within ``ttl_s``; None when
        no node holds any (the common case of a first turn costs one lookup per prefix)."""
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
