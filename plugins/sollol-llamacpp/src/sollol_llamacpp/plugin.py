"""The sollol-llamacpp plugin's hooks.

Two endpoint kinds: ``llamacpp-rpc`` (RPC workers: role worker; they hold layers for a
coordinator) and ``llamacpp`` (a plain llama-server running a model whole: role node). A model
that must be split — forced by ``[llamacpp] shard`` or held whole by no healthy node — is placed
on the workers that can take it, and run through a coordinator this plugin starts and reuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from aiohttp import web
from attrs import define, evolve, field

from sollol_core.config import Settings
from sollol_core.errors import BackendError
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.http import Sessions
from sollol_core.types import (
    Decision,
    Endpoint,
    FleetSnapshot,
    Health,
    InferenceRequest,
    NodeSnapshot,
    Operation,
    Role,
    ShardPlan,
    model_key,
)
from sollol_llamacpp import calibration, catalogue, server_http
from sollol_llamacpp.agent_workers import AgentWorkers, add_agent_routes
from sollol_llamacpp.binaries import Binaries, require_binaries
from sollol_llamacpp.calibration import Calibration
from sollol_llamacpp.coordinator import Coordinators
from sollol_llamacpp.estimate import ModelFootprint, read_footprint
from sollol_llamacpp.planner import ModelNeeds, NoPlanFits, WorkerCapacity, plan_shards
from sollol_llamacpp.rpc_probe import probe_rpc, snapshot_from
from sollol_llamacpp.sweep import LocalhostWorker, RpcSweep, implicit_workers_wanted
from sollol_llamacpp.workers import KIND as RPC_KIND
from sollol_llamacpp.workers import WorkerPool

log = logging.getLogger(__name__)

SERVER_KIND = "llamacpp"
GIB = 2**30
POLICY = "llamacpp-shard"


@define
class State:
    """What the plugin holds while a router runs."""

    sessions: Sessions = field(factory=Sessions)
    settings: Settings = field(factory=Settings)
    models: dict[str, Path] = field(factory=dict)
    footprints: dict[str, ModelFootprint] = field(factory=dict)
    calibration: Calibration = field(factory=Calibration)
    #: Models whose GGUF could not be read: why, for the placement's refusal.
    unreadable: dict[str, str] = field(factory=dict)
    coordinators: Coordinators | None = None
    pool: WorkerPool | None = None
    binaries: Binaries | None = None
    #: Workers this router keeps on agents (``[llamacpp] agent_workers``).
    agent_workers: AgentWorkers = field(factory=AgentWorkers)

    def find_binaries(self) -> Binaries:
        if self.binaries is None:
            configured = Path(self.settings.llamacpp.bin_dir) if self.settings.llamacpp.bin_dir \
                else None
            self.binaries = require_binaries(configured_dir=configured)
        return self.binaries

    def gguf_for(self, model: str) -> Path | None:
        return next((p for n, p in self.models.items() if model_key(n) == model_key(model)), None)


_state = State()
_sweeper = RpcSweep()
_localhost_worker = LocalhostWorker()


@hookimpl
def sollol_lifespan(settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    return _running(settings)


@contextlib.asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[None]:
    _state.settings = settings
    _state.coordinators = Coordinators(_state.find_binaries)
    watcher: asyncio.Task[None] | None = None
    async with _state.sessions.hold():
        try:
            if settings.llamacpp.local_workers:
                _state.pool = WorkerPool(_state.find_binaries())
                await _state.pool.start(settings.llamacpp.local_workers)
            watcher = asyncio.create_task(
                _state.coordinators.watch(settings.llamacpp.idle_unload_s))
            yield
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await _state.coordinators.stop()
            if _state.pool is not None:
                await _state.pool.stop()
                _state.pool = None
            await _state.agent_workers.release(settings, _state.sessions)


@hookimpl
def sollol_discover(settings: Settings) -> Awaitable[Sequence[Endpoint]]:
    async def discover() -> Sequence[Endpoint]:
        _state.settings = settings
        _state.models, footprints, unreadable = await asyncio.to_thread(
            _catalogue_with_footprints, settings, frozenset(_state.footprints))
        _state.footprints.update(footprints)
        for key, why in unreadable.items():
            if key not in _state.unreadable:
                log.warning("%s", why)
        _state.unreadable = unreadable
        found = [Endpoint.parse(RPC_KIND, a, default_port=50052)
                 for a in settings.discovery.rpc_backends]
        found += [Endpoint.parse(SERVER_KIND, a, default_port=8080)
                  for a in settings.discovery.llamacpp_servers]
        if _state.pool is not None:
            found += [w.endpoint for w in _state.pool.workers]
        found += await _state.agent_workers.ensure(settings, _state.sessions)
        local = _localhost_worker.endpoint
        if implicit_workers_wanted(settings) and local.key not in {e.key for e in found}:
            # held by our coordinator, it would not answer HELLO; it was found before it was held
            if _holder_of(local) is not None \
                    or await _localhost_worker.answers(settings.discovery.timeout_s):
                found.append(local)
        if settings.discovery.subnets:
            found += await _sweeper.sweep(settings.discovery.subnets,
                                          settings.discovery.timeout_s)
        return found

    return discover()


@hookimpl
def sollol_probe(endpoint: Endpoint, settings: Settings) -> Awaitable[NodeSnapshot] | None:
    if endpoint.kind == SERVER_KIND:
        async def probe_server() -> NodeSnapshot:
            async with _state.sessions.session() as session:
                return await server_http.probe_server(session, endpoint,
                                                      settings.health.timeout_s)

        return probe_server()
    if endpoint.kind != RPC_KIND:
        return None

    async def probe_worker() -> NodeSnapshot:
        holder = _holder_of(endpoint)
        if holder is not None:  # held: a probe would wait for a HELLO that never comes
            return NodeSnapshot(
                endpoint=endpoint, health=Health.BUSY, taken_at=time.time(), role=Role.WORKER,
                detail=f"held by the coordinator for {holder}",
                models=catalogue.as_model_infos(_state.models, holder))
        status = await probe_rpc(endpoint.host, endpoint.port,
                                 timeout_s=min(settings.health.timeout_s, 1.0))
        snapshot = snapshot_from(endpoint, status)
        return evolve(snapshot, models=catalogue.as_model_infos(_state.models, None))

    return probe_worker()


def _catalogue_with_footprints(
        settings: Settings, known: frozenset[str],
) -> tuple[dict[str, Path], dict[str, ModelFootprint], dict[str, str]]:
    """The shardable models, and what each one not in ``known`` needs from its GGUF's header
    (read in a thread: the caller stores the results on the event loop, where placement reads
    them). Unreadable files come back with the reason."""
    models = catalogue.shardable(settings)
    footprints: dict[str, ModelFootprint] = {}
    unreadable: dict[str, str] = {}
    for name, path in models.items():
        key = model_key(name)
        if key in known:
            continue
        try:
            footprints[key] = read_footprint(path)
        except Exception as exc:  # llama.cpp could not load it either: refused at placement
            unreadable[key] = f"cannot read {path}: {exc}"
    return models, footprints, unreadable


def _holder_of(endpoint: Endpoint) -> str | None:
    """The model whose coordinator holds (or is connecting to) this worker, if any."""
    coordinators = _state.coordinators
    if coordinators is None:
        return None
    for coordinator in coordinators.running.values():
        if coordinator.alive and endpoint.key in {w.key for w in coordinator.workers}:
            return coordinator.model
    for key, workers in coordinators.starting.items():
        if endpoint.key in {w.key for w in workers}:
            return next((name for name in _state.models if model_key(name) == key), key)
    return None


@hookimpl
def sollol_place(request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
    """Shard when forced (by name, or by ``distributed_threshold_params``), or when no healthy
    node that holds the model has the memory to run it whole; embeddings stay on whole-model
    nodes; else defer to the next policy."""
    model = request.model
    key = model_key(model)
    workers = [n for n in fleet.nodes if n.role is Role.WORKER and n.holds_key(key)
               and (n.health is Health.UP or (n.health is Health.BUSY and n.has_loaded(model)))]
    if not workers:  # nothing to shard over: the common case of a fleet of whole-model nodes
        return None
    options = _state.settings.llamacpp
    footprint = _state.footprints.get(key)
    holders = [n for n in fleet.healthy(Role.NODE) if n.holds_key(key)]
    if holders and request.operation in (Operation.EMBED, Operation.EMBEDDINGS):
        return None
    forced = any(key == model_key(m) for m in options.shard)
    threshold = options.distributed_threshold_params
    big = bool(threshold and footprint and footprint.parameter_count >= threshold)
    whole_bytes = _whole_bytes(model, footprint, holders)
    wanted = whole_bytes * (1 + options.memory_margin)
    room: list[int] = []
    for holder in holders:  # the first that can run it whole ends the search
        free = fleet.free_bytes_of(holder)
        if holder.has_loaded(model) or free is None or free >= wanted:
            if not forced and not big:
                return None
            break
        room.append(free)
    if forced:
        why = "forced by [llamacpp] shard"
    elif big and footprint is not None and threshold is not None:
        why = (f"{footprint.parameter_count / 1e9:.2f}B parameters is over the "
               f"distributed_threshold_params of {threshold / 1e9:.2f}B")
    elif holders:
        largest = max(room)
        why = (f"needs {whole_bytes / GIB:.2f} GiB (+{options.memory_margin:.0%} margin) whole; "
               f"largest node holding it has {largest / GIB:.2f} GiB free")
    else:
        why = "no healthy node holds it whole"
    # A coordinator already serving this model keeps its workers: reuse beats reload.
    serving = sorted((n for n in workers if n.has_loaded(model)), key=lambda n: n.endpoint.key)
    if serving:
        plan = ShardPlan(workers=tuple(n.endpoint for n in serving), tensor_split=())
        return Decision.sharded(request, plan, policy=POLICY, reason=(
            f"{why}; reusing its coordinator on {len(serving)} RPC workers"))
    if footprint is None:
        unreadable = _state.unreadable.get(key, "its GGUF has not been read yet")
        return Decision.refuse(request, policy=POLICY, reason=f"{why}, but {unreadable}")
    claimed = _state.coordinators.claimed(besides=model) if _state.coordinators else set()
    available = [n for n in workers if n.health is Health.UP and n.endpoint.key not in claimed]
    needs = _needs(model, footprint)
    try:
        plan = plan_shards(needs, [WorkerCapacity.of(n) for n in available],
                           strategy=options.layer_strategy,  # type: ignore[arg-type]
                           min_workers=options.min_shard_workers)
    except NoPlanFits as exc:
        return Decision.refuse(request, policy=POLICY, reason=f"{why}, but {exc}")
    layers = "/".join(str(count) for count in plan.layers)
    # a new coordinator may take up to its start-up limit before the first token
    return Decision.sharded(request, plan, policy=POLICY, reason=(
        f"{why}; needs {needs.total_bytes / GIB:.2f} GiB on the workers; sharded over "
        f"{len(plan.workers)} RPC workers ({options.layer_strategy}, layers {layers})"),
        startup_s=options.coordinator_timeout_s)


@functools.lru_cache(maxsize=64)
def _total_bytes(footprint: ModelFootprint, context: int, parallel: int) -> int:
    return footprint.total_bytes(context, parallel)


def _whole_bytes(model: str, footprint: ModelFootprint | None,
                 holders: Sequence[NodeSnapshot]) -> int:
    """What one process needs to run ``model`` whole: the estimate from its GGUF where known,
    else its size on a node plus a fifth for the KV cache and buffers."""
    options = _state.settings.llamacpp
    if footprint is not None:
        return _total_bytes(footprint, options.context_size, options.parallel)
    key = model_key(model)
    size = max((m.size_bytes for n in holders for m in n.models if model_key(m.name) == key),
               default=0)
    return int(size * 1.2)


def _needs(model: str, footprint: ModelFootprint) -> ModelNeeds:
    """What the model needs on the workers, scaled by what earlier loads measured."""
    options = _state.settings.llamacpp
    needs = ModelNeeds(
        layer_bytes=footprint.per_layer_total(options.context_size, options.parallel),
        last_bytes=footprint.non_layer_bytes,
        overhead_bytes=footprint.compute_buffer_bytes(options.context_size,
                                                      parallel=options.parallel))
    return _state.calibration.scale(needs, model)


def _learn(model: str, plan: ShardPlan, log_path: Path) -> None:
    footprint = _state.footprints.get(model_key(model))
    if footprint is None or not plan.layers:
        return
    planned = calibration.planned_bytes(_needs(model, footprint), plan.workers, plan.layers)
    learnt = _state.calibration.learn(model, log_path, planned)
    if learnt is not None:
        log.info("%s on RPC workers: estimated %.0f MiB, llama.cpp allocated %.0f MiB; "
                 "correction factor now %.3f", model, learnt.estimated_bytes / 2**20,
                 learnt.measured_bytes / 2**20, learnt.factor)


@hookimpl
def sollol_execute(request: InferenceRequest, decision: Decision,
                   settings: Settings) -> AsyncIterator[Chunk] | None:
    if decision.plan is not None:
        return _run_sharded(request, decision.plan, settings)
    if decision.target is not None and decision.target.kind == SERVER_KIND:
        return _run_on(f"http://{decision.target.address}", request, decision.target.address)
    return None


async def _run_on(base_url: str, request: InferenceRequest, label: str) -> AsyncIterator[Chunk]:
    async with _state.sessions.session() as session:
        async for chunk in server_http.run(session, base_url, request, label):
            yield chunk


async def _run_sharded(request: InferenceRequest, plan: ShardPlan,
                       settings: Settings) -> AsyncIterator[Chunk]:
    gguf = _state.gguf_for(request.model)
    coordinators = _state.coordinators
    if gguf is None or coordinators is None:
        raise BackendError(f"no GGUF file is known for {request.model}", retryable=False)
    sent = 0
    for attempt in (1, 2):  # a coordinator that crashed before answering is restarted once
        coordinator = await coordinators.ensure(
            request.model, gguf, plan.workers, plan.tensor_split,
            context_size=settings.llamacpp.context_size, parallel=settings.llamacpp.parallel,
            timeout_s=settings.llamacpp.coordinator_timeout_s)
        if not coordinator.calibrated:
            coordinator.calibrated = True
            _learn(request.model, plan, coordinator.child.log_path)
        try:
            async for chunk in _run_on(coordinator.url, request, f"coordinator {coordinator.url}"):
                sent += 1
                yield chunk
            coordinator.last_used = time.monotonic()
            return
        except BackendError:
            await asyncio.sleep(0.2)
            if coordinator.alive or attempt == 2 or sent:  # sent chunks cannot be taken back
                raise
            log.warning("the coordinator for %s died mid-request; restarting it", request.model)
            await coordinators.forget_dead()


@hookimpl
def sollol_status() -> Mapping[str, Any]:
    coordinators = _state.coordinators
    now = time.monotonic()
    running = [
        {"model": c.model, "url": c.url, "pid": c.child.pid, "alive": c.alive,
         "workers": [w.address for w in c.workers], "tensor_split": list(c.tensor_split),
         "uptime_s": round(time.time() - c.started_at, 1), "ready_s": round(c.ready_s, 2),
         "idle_s": round(now - c.last_used, 1), "log": str(c.child.log_path)}
        for c in (coordinators.running.values() if coordinators else ())]
    local = [{"address": w.endpoint.address, "pid": w.child.pid, "restarts": w.restarts}
             for w in (_state.pool.workers if _state.pool else ())]
    corrections = [{"model": c.model, "worker_kind": c.kind, "factor": c.factor,
                    "estimated_mib": round(c.estimated_bytes / 2**20, 1),
                    "measured_mib": round(c.measured_bytes / 2**20, 1)}
                   for c in _state.calibration.by_model.values()]
    return {"coordinators": running, "local_rpc_workers": local,
            "shardable_models": sorted(_state.models), "corrections": corrections}


@hookimpl
def sollol_agent_app(app: web.Application, settings: Settings) -> None:
    """``sollol agent`` on this machine starts and stops RPC workers when a router asks."""
    add_agent_routes(app, settings)


@hookimpl
def sollol_register_commands(cli: click.Group) -> None:
    from sollol_llamacpp.commands import demo, llamacpp

    cli.add_command(llamacpp)
    cli.add_command(demo)
