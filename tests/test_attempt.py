"""One attempt, one claim, one record: however a try of a request ends (an answer, a node's fault,
a refusal, a timeout, the client leaving, a plugin's bug), its node is given back, its circuit
learns what it says about the node, and observers hear of the attempt once and of the request
once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest

from sollol_core.breaker import CircuitState
from sollol_core.config import PluginSettings, Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import Recorder, StaticBackend, node
from sollol_core.types import Decision, Endpoint, FleetSnapshot, InferenceRequest

HI = [{"role": "user", "content": "hi"}]


@attrs.define
class Scripted(StaticBackend):
    """Nodes that behave as told, one behaviour per request (then they answer): ``hang`` before
    the first chunk, ``down`` (refused), ``refuse`` (a 400: the request's fault), ``bug`` (a
    plugin's bug before the first chunk), ``bug-mid`` and ``break-mid`` (after one chunk),
    ``execute-bug`` (the executor hook itself raises). Placement: the first holder by name."""

    script: dict[str, list[str]] = attrs.field(factory=dict)
    waiting: asyncio.Event = attrs.field(factory=asyncio.Event)

    @hookimpl(tryfirst=True)
    def sollol_place(self, request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
        holders = sorted((n for n in fleet.nodes if n.holds(request.model)),
                         key=lambda n: n.endpoint.host)
        if not holders:
            return None
        return Decision.whole(request, holders[0].endpoint, policy="first", reason="by name")

    def _next(self, name: str) -> str:
        steps = self.script.get(name)
        return steps.pop(0) if steps else "answer"

    @hookimpl(tryfirst=True)
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        if not self._owns(decision.target):
            return None
        assert decision.target is not None
        steps = self.script.get(decision.target.host)
        if steps and steps[0] == "execute-bug":
            steps.pop(0)
            raise RuntimeError("executor bug")
        return self._answer(request, decision.target)

    async def _answer(self, request: InferenceRequest, target: Endpoint) -> AsyncIterator[Chunk]:
        step = self._next(target.host)
        self.executed.append((target.host, request))
        if step == "hang":
            self.waiting.set()
            await asyncio.sleep(3600)
        if step == "down":
            raise BackendError(f"{target.host} refused the connection")
        if step == "refuse":
            raise BackendError("bad request", status=400, retryable=False)
        if step == "bug":
            raise RuntimeError("plugin bug")
        yield {"model": request.model, "done": False,
               "message": {"role": "assistant", "content": f"{target.host} "}}
        if step == "bug-mid":
            raise RuntimeError("plugin bug mid-stream")
        if step == "break-mid":
            raise BackendError(f"{target.host} broke off mid-answer")
        if step == "silent-mid":
            await asyncio.sleep(3600)
        yield {"model": request.model, "done": True, "eval_count": 2,
               "message": {"role": "assistant", "content": ""}}


async def router_with(backend: Scripted, recorder: Recorder, **env: str) -> Router:
    settings = Settings.load(environ={"SOLLOL_FIRST_TOKEN_TIMEOUT": "5", **env})
    plugins = Plugins.load(PluginSettings(load=()),
                           extra=[("scripted", backend), ("recorder", recorder)])
    router = Router.create(settings, plugins)
    await router.fleet.refresh()
    return router


def in_flight(router: Router) -> dict[str, int]:
    return {n.endpoint.host: n.in_flight for n in router.fleet.snapshot().nodes}


def assert_books_balanced(router: Router, recorder: Recorder, *, attempts: int) -> None:
    """Every node given back, every attempt reported once, the request reported once."""
    assert set(in_flight(router).values()) == {0}
    assert len(router.queue) == 0
    assert sorted(r.attempt for r in recorder.attempts) == list(range(1, attempts + 1))
    assert len(recorder.finished) == 1
    assert recorder.finished[0].attempts == attempts


async def streamed(router: Router, model: str = "m") -> list[Chunk]:
    reply = await router.open(InferenceRequest.chat(model, HI, stream=True))
    return [chunk async for chunk in reply]


async def whole(router: Router) -> list[Chunk]:
    chunks, _ = await router.collect(InferenceRequest.chat("m", HI))
    return chunks


async def left_after_one_chunk(router: Router) -> list[Chunk]:
    """The client reads one chunk, then goes away (the gateway closes the relay)."""
    reply = await router.open(InferenceRequest.chat("m", HI, stream=True))
    async with contextlib.aclosing(aiter(reply)) as chunks:
        return [await anext(chunks)]


# (name, script for a, the run, the error it raises or None, attempts, ok, error_type of a's try)
ENDINGS: list[tuple[str, list[str], Callable[[Router], Awaitable[Any]],
                    type[BaseException] | None, int, bool, str | None]] = [
    ("answered", [], streamed, None, 1, True, None),
    ("answered whole", [], whole, None, 1, True, None),
    ("failed over", ["down"], streamed, None, 2, True, "BackendError"),
    ("refused by the node", ["refuse"], streamed, BackendError, 1, False, "400"),
    ("plugin bug first", ["bug"], streamed, RuntimeError, 1, False, "RuntimeError"),
    ("executor bug", ["execute-bug"], streamed, RuntimeError, 1, False, "RuntimeError"),
    ("plugin bug midway", ["bug-mid"], streamed, RuntimeError, 1, False, "RuntimeError"),
    ("broke off streamed", ["break-mid"], streamed, BackendError, 1, False, "BackendError"),
    ("broke off whole", ["break-mid"], whole, None, 2, True, "BackendError"),
    ("no first chunk", ["hang"], streamed, None, 2, True, "timeout"),
    ("silent midway", ["silent-mid"], streamed, BackendError, 1, False, "timeout"),
    ("client left midway", [], left_after_one_chunk, None, 1, False, "cancelled"),
]


@pytest.mark.parametrize(("script", "run", "raises", "attempts", "ok", "error_type"),
                         [e[1:] for e in ENDINGS], ids=[e[0] for e in ENDINGS])
async def test_every_ending_gives_the_node_back_and_reports_once(
        script: list[str], run: Callable[[Router], Awaitable[Any]],
        raises: type[BaseException] | None, attempts: int, ok: bool,
        error_type: str | None) -> None:
    backend = Scripted([node("a", models=["m"]), node("b", models=["m"])],
                       script={"a": list(script)})
    recorder = Recorder()
    router = await router_with(backend, recorder, SOLLOL_FIRST_TOKEN_TIMEOUT="0.3",
                               SOLLOL_SILENCE_TIMEOUT="0.3")
    if raises is None:
        await run(router)
    else:
        with pytest.raises(raises):
            await run(router)
    assert_books_balanced(router, recorder, attempts=attempts)
    assert recorder.finished[0].ok is ok
    assert recorder.attempts[0].error_type == error_type
    assert recorder.attempts[-1].ok is ok


async def test_a_client_leaving_during_a_half_open_trial_frees_the_trial() -> None:
    backend = Scripted([node("a", models=["m"])], script={"a": ["hang"]})
    recorder = Recorder()
    router = await router_with(backend, recorder)
    breaker = router.breakers.of("static://a:11434")
    for _ in range(breaker.min_samples):  # long ago: its cool-down is over, the next is a trial
        breaker.record(False, -1000.0)
    waiting = asyncio.create_task(router.open(InferenceRequest.chat("m", HI, stream=True)))
    await backend.waiting.wait()
    assert breaker.state is CircuitState.HALF_OPEN and in_flight(router) == {"a": 1}
    waiting.cancel()  # the client goes away before the first chunk
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert_books_balanced(router, recorder, attempts=1)
    ((attempt,), (request,)) = recorder.attempts, recorder.finished
    assert (attempt.ok, attempt.error_type) == (False, "cancelled")
    assert not request.ok and "went away" in (request.error or "")
    # no verdict on the node: the trial is free again, and the next request takes it
    assert breaker.state is CircuitState.HALF_OPEN
    chunks = await streamed(router)
    assert chunks[0]["message"]["content"] == "a "
    assert breaker.state is CircuitState.CLOSED


async def test_a_clients_bad_request_or_leaving_never_counts_against_the_node() -> None:
    backend = Scripted([node("a", models=["m"])], script={"a": ["refuse", "bug"] * 4})
    recorder = Recorder()
    router = await router_with(backend, recorder)
    for _ in range(8):
        with pytest.raises((BackendError, RuntimeError)):
            await streamed(router)
    assert router.breakers.of("static://a:11434").state is CircuitState.CLOSED
    assert set(in_flight(router).values()) == {0} and len(recorder.finished) == 8


async def test_a_whole_answer_run_again_and_failing_again_is_one_failed_request() -> None:
    backend = Scripted([node("a", models=["m"]), node("b", models=["m"])],
                       script={"a": ["break-mid"], "b": ["break-mid"]})
    recorder = Recorder()
    router = await router_with(backend, recorder, SOLLOL_MAX_ATTEMPTS="2")
    with pytest.raises(BackendError, match="b broke off"):
        await whole(router)
    assert_books_balanced(router, recorder, attempts=2)
    (request,) = recorder.finished
    assert not request.ok and request.decision is not None
    assert request.decision.target is not None and request.decision.target.host == "b"
    assert [(r.decision.target.host if r.decision.target else "", r.ok)
            for r in recorder.attempts] == [("a", False), ("b", False)]


async def test_a_reply_closed_by_its_relay_and_then_by_its_generator_ends_once() -> None:
    backend = Scripted([node("a", models=["m"])])
    recorder = Recorder()
    router = await router_with(backend, recorder)
    reply = await router.open(InferenceRequest.chat("m", HI, stream=True))
    chunks = aiter(reply)
    await anext(chunks)
    await reply.close(1, "the client went away mid-stream")  # as the OpenAI relay does
    await reply.close(1, "again")
    await chunks.aclose()  # type: ignore[attr-defined]
    assert_books_balanced(router, recorder, attempts=1)
    (request,) = recorder.finished
    assert (request.ok, request.error, request.chunks) == (
        False, "the client went away mid-stream", 1)
    assert router.breakers.of("static://a:11434").ratio() == 0.0


async def test_a_reply_never_relayed_still_gives_its_node_back_when_closed() -> None:
    backend = Scripted([node("a", models=["m"])])
    recorder = Recorder()
    router = await router_with(backend, recorder)
    reply = await router.open(InferenceRequest.chat("m", HI, stream=True))
    assert in_flight(router) == {"a": 1}
    await reply.close(0, "the client went away before the first byte")
    assert_books_balanced(router, recorder, attempts=1)


async def test_no_placement_and_no_executor_are_reported_once() -> None:
    recorder = Recorder()
    router = await router_with(Scripted([node("a", models=["m"])]), recorder)
    router.fleet.record(node("x", models=["n"], kind="nobody"))  # no plugin runs its kind
    with pytest.raises(NoRouteError, match="on no healthy node"):
        await streamed(router, "ghost")
    assert [r.ok for r in recorder.finished] == [False] and recorder.attempts == []
    assert recorder.finished[0].attempts == 1  # the refused placement was its try
    recorder.finished.clear()
    with pytest.raises(NoRouteError, match="no plugin can run requests on nobody"):
        await streamed(router, "n")
    assert_books_balanced(router, recorder, attempts=1)
    assert recorder.attempts[0].error_type == "NoRouteError"
