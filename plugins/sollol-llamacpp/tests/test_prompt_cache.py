"""Prompt-cache affinity with the real model on whole-model llama-server nodes: a conversation's
next turn goes back to the node that holds it, with another node idle and as fast, and that node
evaluates only the new tokens (llama-server's ``cache_prompt``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.testing import llama_servers, smollm2_gguf

from sollol_core.config import Settings
from sollol_core.router import Router
from sollol_core.types import InferenceRequest

MODEL = "smollm2"
SYSTEM = ("You are a patient tutor for a small team that runs language models on a handful "
          "of machines. Answer briefly, in plain words, and say when you are unsure. ") * 8


def chat(messages: list[dict[str, str]], tokens: int, *, stream: bool = False,
         ) -> InferenceRequest:
    return InferenceRequest.chat(MODEL, messages, stream=stream,
                                 options={"num_predict": tokens, "temperature": 0})


async def drain(reply: AsyncIterator[object]) -> None:
    async for _ in reply:
        pass


async def test_the_next_turn_returns_to_the_node_holding_the_conversation(
        binaries: Binaries, tmp_path: Path) -> None:
    with llama_servers(binaries, smollm2_gguf(), MODEL, 2, tmp_path) as nodes:
        settings = Settings.load(environ={"SOLLOL_LLAMACPP_SERVERS": ",".join(nodes),
                                          "SOLLOL_LOAD_PLUGINS": "llamacpp"})
        router = Router.create(settings)
        await router.start()
        try:
            hello = [{"role": "user", "content": "Hello"}]
            for _ in range(3):  # both measured
                await router.run(chat(hello, 4))
            # while one node is busy with a long answer (SOLLOL expects it to take a while:
            # 400 tokens), the conversation starts on the other one
            long = await router.open(chat([{"role": "user", "content": "Count to 500."}], 400,
                                          stream=True))
            assert long.decision.target is not None
            busy = long.decision.target.address
            reading = asyncio.create_task(drain(long))
            history = [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "What is a GGUF file?"}]
            chunks, first = await router.run(chat(history, 16))
            first_evaluated = chunks[-1]["prompt_eval_count"]
            await reading  # the long answer ends: both nodes are idle again
            history += [chunks[-1]["message"], {"role": "user", "content": "And a slot?"}]
            chunks, second = await router.run(chat(history, 16))
        finally:
            await router.stop()
    assert first.node != busy, first.reason
    # the other node is idle, but the second turn goes where its prompt is cached...
    assert second.node == first.node, second.reason
    assert "prompt tokens cached there" in second.reason
    # ...and evaluates only what is new there, not the system prompt and first turn again
    evaluated = chunks[-1]["prompt_eval_count"]
    assert first_evaluated > 150 and evaluated < first_evaluated / 4, (first_evaluated,
                                                                        evaluated)
