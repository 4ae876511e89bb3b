"""Helpers for plugin authors' tests (and ours): a fleet you describe in code, and recorders.

``StaticBackend`` is a complete backend plugin of kind ``static``: it discovers the nodes you give
it, probes them into the snapshots you described and answers requests with a text that names the
node, so a test can see where a request ran. ``Recorder`` keeps every decision and finished
request the observation hooks report.

    from sollol_core.testing import Recorder, StaticBackend, node
    backend = StaticBackend([node("a", models=["m"]), node("b", models=["m"], in_flight=1)])
    plugins = Plugins.load(extra=[("static", backend), ("recorder", recorder := Recorder())])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any

from attrs import define, evolve, field

from sollol_core.config import Settings
from sollol_core.errors import BackendError
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.types import (
    AttemptRecord,
    Decision,
    DeviceMemory,
    Endpoint,
    FleetSnapshot,
    Health,
    InferenceRequest,
    ModelInfo,
    NodeSnapshot,
    Operation,
    RequestRecord,
    Role,
)

KIND = "static"
GiB = 1024**3


def node(name: str, *, models: Iterable[str] = (), loaded: Iterable[str] = (),
         free_gib: float = 8.0, total_gib: float = 16.0, in_flight: int = 0, parallel: int = 4,
         latency_ms: float = 1.0, health: Health = Health.UP, role: Role = Role.NODE,
         kind: str = KIND, port: int = 11434) -> NodeSnapshot:
    """A snapshot of a made-up node named ``name`` (its host), for placement tests."""
    loaded_set = set(loaded)
    infos = tuple(ModelInfo(name=m, size_bytes=GiB, loaded=m in loaded_set)
                  for m in [*models, *(m for m in loaded if m not in set(models))])
    return NodeSnapshot(
        endpoint=Endpoint(kind=kind, host=name, port=port, source="test"), health=health,
        taken_at=time.time(), role=role, latency_ms=latency_ms, version="test",
        devices=(DeviceMemory("dev0", int(total_gib * GiB), int(free_gib * GiB)),),
        models=infos, in_flight=in_flight, parallel=parallel)


def fleet(*nodes: NodeSnapshot) -> FleetSnapshot:
    return FleetSnapshot(nodes=tuple(nodes))


@define
class StaticBackend:
    """A backend plugin whose nodes are the snapshots it was given.

    ``fail`` maps a node name to the number of requests it should refuse (with BackendError,
    before the first chunk) before it answers again.
    """

    nodes: Sequence[NodeSnapshot]
    fail: dict[str, int] = field(factory=dict)
    executed: list[tuple[str, InferenceRequest]] = field(factory=list)

    def _owns(self, endpoint: Endpoint | None) -> bool:
        return endpoint is not None and endpoint.kind == KIND

    @hookimpl
    def sollol_discover(self, settings: Settings) -> Awaitable[Sequence[Endpoint]]:
        async def found() -> Sequence[Endpoint]:
            return [n.endpoint for n in self.nodes]

        return found()

    @hookimpl
    def sollol_probe(self, endpoint: Endpoint) -> Awaitable[NodeSnapshot] | None:
        if not self._owns(endpoint):
            return None
        snapshot = next(n for n in self.nodes if n.endpoint.key == endpoint.key)

        async def probed() -> NodeSnapshot:
            return evolve(snapshot, taken_at=time.time())

        return probed()

    @hookimpl
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        if not self._owns(decision.target):
            return None
        assert decision.target is not None
        return self._answer(request, decision.target)

    async def _answer(self, request: InferenceRequest, target: Endpoint) -> AsyncIterator[Chunk]:
        name = target.host
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise BackendError(f"{name} refused the request")
        self.executed.append((name, request))
        text = f"answered by {name}"
        done: dict[str, Any] = {"model": request.model, "done": True, "done_reason": "stop"}
        if request.operation is Operation.EMBED:
            yield {"model": request.model, "embeddings": [[0.0, 1.0]]}
            return
        key = "message" if request.operation is Operation.CHAT else "response"
        if request.stream:
            for word in text.split(" "):
                await asyncio.sleep(0)
                yield {"model": request.model, "done": False, **_content(key, word + " ")}
            yield {**done, **_content(key, "")}
        else:
            yield {**done, **_content(key, text)}


def _content(key: str, text: str) -> dict[str, Any]:
    if key == "message":
        return {"message": {"role": "assistant", "content": text}}
    return {"response": text}


@define
class Recorder:
    """An observer plugin that keeps what the observation hooks report."""

    decisions: list[Decision] = field(factory=list)
    attempts: list[AttemptRecord] = field(factory=list)
    finished: list[RequestRecord] = field(factory=list)

    @hookimpl
    def sollol_on_decision(self, decision: Decision) -> None:
        self.decisions.append(decision)

    @hookimpl
    def sollol_on_attempt_finished(self, record: AttemptRecord) -> None:
        self.attempts.append(record)

    @hookimpl
    def sollol_on_request_finished(self, record: RequestRecord) -> None:
        self.finished.append(record)
