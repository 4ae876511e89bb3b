"""The emulator's cost model, judged through the official ``ollama`` client: prefill takes time
in proportion to what a slot does not already hold, the next turn of a conversation reuses the
slot that holds it, counts and durations are what a real node reports, output length is kept."""

from __future__ import annotations

import asyncio

import ollama
from sollol_ollama.testing import CostModel, OllamaEmulator

PREFILL = 2000.0  # prompt tokens/s
LONG = " ".join(f"w{i}" for i in range(400))  # 400 words: 0.2 s of prefill


def turn(history: list[dict[str, str]], text: str) -> list[dict[str, str]]:
    return [*history, {"role": "user", "content": text}]


async def test_the_next_turn_evaluates_only_what_is_new() -> None:
    cost = CostModel(prefill_tokens_per_s=PREFILL, output_tokens=5)
    async with OllamaEmulator(name="a", tokens_per_s=10_000, cost=cost) as node:
        client = ollama.AsyncClient(host=node.url)
        first = await client.chat(model="llama3.2", messages=turn([], LONG))
        # <|user|>, 400 words, <|assistant|>: nothing cached on a fresh node
        assert first.prompt_eval_count == 402
        assert first.eval_count == 5 and first.message.content == "a word1 word2 word3 word4"
        assert first.prompt_eval_duration >= 402 / PREFILL * 1e9
        history = [*turn([], LONG), {"role": "assistant", "content": first.message.content}]
        second = await client.chat(model="llama3.2", messages=turn(history, "and then?"))
        # only the new user message and the assistant marker were evaluated
        assert second.prompt_eval_count == 4
        assert second.prompt_eval_duration < first.prompt_eval_duration / 10
        other = await client.chat(model="llama3.2", messages=turn([], "something else"))
        assert other.prompt_eval_count == 3  # another chat shares only the first marker


async def test_a_request_takes_the_free_slot_holding_its_conversation() -> None:
    cost = CostModel(prefill_tokens_per_s=PREFILL, output_tokens=3)
    async with OllamaEmulator(name="b", tokens_per_s=10_000, parallel=2, cost=cost) as node:
        client = ollama.AsyncClient(host=node.url)
        one, two = turn([], LONG), turn([], "short chat " * 50)
        first = await asyncio.gather(client.chat(model="llama3.2", messages=one),
                                     client.chat(model="llama3.2", messages=two))
        for history, reply in ((two, first[1]), (one, first[0])):  # either order: its own slot
            follow = turn([*history, {"role": "assistant", "content": reply.message.content}],
                          "more")
            again = await client.chat(model="llama3.2", messages=follow)
            assert again.prompt_eval_count == 3


async def test_num_predict_and_queueing_are_reported_as_a_node_reports_them() -> None:
    cost = CostModel(prefill_tokens_per_s=PREFILL, output_tokens=8)
    async with OllamaEmulator(name="c", tokens_per_s=100, parallel=1, cost=cost) as node:
        client = ollama.AsyncClient(host=node.url)
        short = await client.chat(model="llama3.2", messages=turn([], "hi"),
                                  options={"num_predict": 3})
        assert short.eval_count == 3 and short.done_reason == "length"
        both = await asyncio.gather(*(client.chat(model="llama3.2", messages=turn([], "x"))
                                      for _ in range(2)))
        waited = max(both, key=lambda r: r.total_duration)
        parts = (waited.load_duration + waited.prompt_eval_duration + waited.eval_duration)
        # the second one queued behind the first (8 tokens at 100/s): Ollama counts that in
        # total_duration, not in any of its parts
        assert waited.total_duration - parts >= 0.05 * 1e9


async def test_without_a_cost_model_nothing_changes() -> None:
    async with OllamaEmulator(name="d", tokens_per_s=10_000) as node:
        reply = await ollama.AsyncClient(host=node.url).chat(model="llama3.2",
                                                             messages=turn([], LONG))
        assert reply.prompt_eval_count == 400 and reply.eval_count == 8
