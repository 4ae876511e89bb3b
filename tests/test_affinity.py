"""The prompt-cache index: which nodes hold which prompt prefixes, bounded and aged; and how
placement weighs what a node holds against its load."""

from __future__ import annotations

from attrs import evolve

from sollol_core.affinity import AffinityIndex, PromptCache, prefixes
from sollol_core.builtin import placement
from sollol_core.testing import fleet, node
from sollol_core.types import InferenceRequest, Performance

MODEL = "llama3.2"
SYSTEM = {"role": "system", "content": "You are terse. " * 100}


def turn(*texts: str) -> InferenceRequest:
    messages = [SYSTEM] + [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                           for i, text in enumerate(texts)]
    return InferenceRequest.chat(MODEL, messages)


def test_the_next_turn_finds_the_node_that_ran_the_conversation() -> None:
    index = AffinityIndex()
    first = turn("What is a slot?" * 20)
    index.record("a", prefixes(first), now=100.0)
    index.record("b", prefixes(turn("Another chat")), now=100.0)
    second = turn("What is a slot?" * 20, "A place for a request.", "And a prompt cache?")
    found = index.lookup(prefixes(second), now=110.0)
    assert found is not None
    # a holds the system prompt and the first question; b only the system prompt
    assert found.cached_tokens["a"] == prefixes(first)[-1][1]
    assert found.cached_tokens["b"] == prefixes(first)[0][1]
    assert found.prompt_tokens == prefixes(second)[-1][1]


def test_old_entries_are_ignored_and_the_index_stays_bounded() -> None:
    index = AffinityIndex(max_entries=3, ttl_s=60.0)
    index.record("a", prefixes(turn("one")), now=0.0)
    assert index.lookup(prefixes(turn("one")), now=61.0) is None  # the node has moved on
    for n in range(5):
        index.record("a", prefixes(turn(f"chat {n} " * 300)), slots=10, now=100.0)
    assert len(index) == 3  # the least recently recorded went first
    assert index.lookup(prefixes(turn("chat 4 " * 300)), now=100.0) is not None


def test_a_raw_prompt_is_indexed_in_blocks() -> None:
    long = "x" * 1000
    steps = prefixes(InferenceRequest.generate(MODEL, long))
    assert [tokens for _, tokens in steps] == [64.0, 128.0, 192.0]  # 256-char blocks
    grown = prefixes(InferenceRequest.generate(MODEL, long + "y" * 600))
    assert grown[:3] == steps


def measured(name: str) -> Performance:
    return Performance(node=node(name).endpoint.key, model=MODEL, latency_ms=2000.0,
                       tokens_per_s=50.0, samples=5, prefill_tokens_per_s=500.0,
                       output_tokens=50.0)


def test_placement_goes_where_the_prompt_is_cached_unless_that_node_is_too_busy() -> None:
    request = turn("q " * 2000)
    nodes = fleet(node("a", loaded=[MODEL], parallel=1), node("b", loaded=[MODEL], parallel=1))
    snapshot = evolve(nodes, performance=(measured("a"), measured("b")))
    b = node("b").endpoint.key
    cache = PromptCache({b: 1000.0}, 1200.0)
    decision = placement.sollol_place(request, evolve(snapshot, facts={PromptCache: cache}))
    assert decision.target is not None and decision.target.host == "b"
    assert decision.reason.startswith(
        "earliest end of 2 holding the model: expected first token 0.75 s, end 1.75 s: 1,000 of "
        "1,375 prompt tokens cached there (375 prompt tokens at 500/s")
    # b busy with a long request: re-evaluating the prompt on a is quicker than waiting
    busy = fleet(node("a", loaded=[MODEL], parallel=1),
                 node("b", loaded=[MODEL], parallel=1, in_flight=1))
    slow = Performance(node=b, model=MODEL, latency_ms=60_000.0, tokens_per_s=50.0, samples=5,
                       prefill_tokens_per_s=500.0, output_tokens=50.0)
    decision = placement.sollol_place(request, evolve(
        busy, performance=(measured("a"), slow), facts={PromptCache: cache}))
    assert decision.target is not None and decision.target.host == "a"


def test_a_node_holds_only_as_many_conversations_as_it_has_slots() -> None:
    index = AffinityIndex()
    # each conversation's own text is longer than the system prompt they share
    chats = [turn(f"conversation {n} " * 200) for n in range(3)]
    for chat in chats:
        index.record("a", prefixes(chat), slots=2, now=100.0)
    system_only = prefixes(chats[0])[0][1]
    found = [index.lookup(prefixes(chat), now=101.0) for chat in chats]
    # the first conversation's slot went to the third (least recently used): only the
    # system prompt, which the other two share, is still there
    assert [f.cached_tokens["a"] if f else None for f in found] == [
        system_only, prefixes(chats[1])[-1][1], prefixes(chats[2])[-1][1]]
    # the next turn of a conversation takes its own slot back, not another one's
    index.record("a", prefixes(turn("conversation 1 " * 200, "yes", "and?")), slots=2,
                 now=102.0)
    held = index.lookup(prefixes(chats[2]), now=103.0)
    assert held is not None and held.cached_tokens["a"] == prefixes(chats[2])[-1][1]


def test_a_node_that_went_down_is_believed_to_hold_nothing() -> None:
    index = AffinityIndex()
    index.record("a", prefixes(turn("hello " * 50)), slots=4, now=0.0)
    index.record("b", prefixes(turn("hello " * 50)), slots=4, now=0.0)
    index.forget("a")
    found = index.lookup(prefixes(turn("hello " * 50)), now=1.0)
    assert found is not None and set(found.cached_tokens) == {"b"}
