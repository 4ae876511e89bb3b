"""The router's time limits with plugins of its own: a backend's start-up allowance, a caller's
timeout, and a non-streamed request whose node fails midway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from sollol_core.config import PluginSettings, Settings
from sollol_core.errors import BackendError
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import Recorder, StaticBackend, node
from sollol_core.types import Decision, FleetSnapshot, InferenceRequest

HI = [{"role": "user", "content": "hi"}]


@attrs.define
class SlowStarter(StaticBackend):
    """A backend that needs ``start_s`` before its first chunk (a model load), then answers in
    pieces; the node named in ``dies`` breaks off after its first piece."""

    start_s: float = 0.0
    startup_s: float = 0.0
    dies: set[str] = attrs.field(factory=set)

    @hookimpl(tryfirst=True)
    def sollol_place(self, request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
        holders = sorted((n for n in fleet.nodes if n.holds(request.model)),
                         key=lambda n: n.endpoint.host)
        if not holders:
            return None
        return attrs.evolve(Decision.whole(request, holders[0].endpoint, policy="slow",
                                           reason="first holder"), startup_s=self.startup_s)

    async def _answer(self, request: InferenceRequest, target: Any) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.start_s)
        self.executed.append((target.host, request))
        for word in ("one ", "two "):
            yield {"model": request.model, "done": False,
                   "message": {"role": "assistant", "content": word}}
            if target.host in self.dies:
                raise BackendError(f"{target.host} broke off mid-answer")
        yield {"model": request.model, "done": True, "eval_count": 2,
               "message": {"role": "assistant", "content": ""}}


async def router_with(backend: SlowStarter, recorder: Recorder | None = None,
                      **env: str) -> Router:
    settings = Settings.load(environ={"SOLLOL_FIRST_TOKEN_TIMEOUT": "0.3", **env})
    extra: list[tuple[str, object]] = [("slow", backend)]
    if recorder is not None:
        extra.append(("recorder", recorder))
    router = Router.create(settings, Plugins.load(PluginSettings(load=()), extra=extra))
    await router.start()
    return router


@pytest.mark.parametrize(("startup_s", "timeout_s", "answers"), [
    (0.0, None, False), (2.0, None, True), (0.0, 5.0, True)])
async def test_a_slow_start_is_allowed_by_the_decision_or_the_callers_timeout(
        startup_s: float, timeout_s: float | None, answers: bool) -> None:
    backend = SlowStarter([node("a", models=["m"])], start_s=0.8, startup_s=startup_s)
    router = await router_with(backend)
    request = attrs.evolve(InferenceRequest.chat("m", HI), timeout_s=timeout_s)
    try:
        if answers:
            chunks, routing = await router.run(request)
            assert chunks[0]["message"]["content"] == "one two " and routing.attempts == 1
        else:
            with pytest.raises(BackendError, match=r"no first chunk within 0\.3 s"):
                await router.run(request)
    finally:
        await router.stop()


async def test_a_non_streamed_request_whose_node_breaks_off_runs_again_elsewhere() -> None:
    recorder = Recorder()
    backend = SlowStarter([node("a", models=["m"]), node("b", models=["m"])], dies={"a"})
    router = await router_with(backend, recorder)
    try:
        chunks, routing = await router.run(InferenceRequest.chat("m", HI))
        assert routing.node.startswith("b") and routing.attempts == 2
        assert chunks[0]["message"]["content"] == "one two "  # nothing of a's half answer
        assert [r.ok for r in recorder.finished] == [True]  # one request, finished once
        assert [r.ok for r in recorder.attempts] == [False, True]
        # streamed, the half answer was sent: it ends with the node's error instead
        reply = await router.open(InferenceRequest.chat("m", HI, stream=True))
        with pytest.raises(BackendError, match="broke off"):
            [chunk async for chunk in reply]
    finally:
        await router.stop()
