"""The guide's "automatic fallback": when a coordinator cannot start, and an Ollama node holds
the model, the request runs there, and its routing reason says what failed first."""

from __future__ import annotations

from pathlib import Path

from sollol_llamacpp.settings import LlamacppSettings
from sollol_ollama.testing import OllamaEmulator

from sollol_core.config import Settings
from sollol_core.router import Router
from sollol_core.types import InferenceRequest

from .test_sharding import wait_free


async def test_a_coordinator_that_cannot_start_falls_back_to_an_ollama_node(
        gemma: Path, shared_workers: list[str]) -> None:
    workers = shared_workers[:2]
    await wait_free(workers)
    async with OllamaEmulator(name="fallback") as node:
        base = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "llamacpp,ollama",
                                      "SOLLOL_IMPLICIT_NODES": "false",
                                      "OLLAMA_NODES": node.url.removeprefix("http://")})
        # llama3.2 always sharded, from a file; its coordinator gets no time to load it
        settings = base.with_sections(LlamacppSettings(
            rpc_backends=tuple(workers), models={"llama3.2": str(gemma)}, shard=("llama3.2",),
            coordinator_timeout_s=0.01, context_size=1024, parallel=1))
        router = Router.create(settings)
        await router.start()
        try:
            chunks, routing = await router.run(InferenceRequest.chat(
                "llama3.2", [{"role": "user", "content": "Hi"}], stream=False))
        finally:
            await router.stop()
    assert routing.node == node.url.removeprefix("http://") and routing.attempts == 2
    assert "(after 1 failed attempt: sharded:" in routing.reason
    assert chunks[-1]["done"] is True
