"""The sollol-llamacpp plugin: one :class:`LlamacppPlugin` per router.

Two endpoint kinds: ``llamacpp-rpc`` (RPC workers: role worker; they hold layers for a
coordinator) and ``llamacpp`` (a plain llama-server running a model whole: role node). A model
that must be split — forced by ``[llamacpp] shard`` or held whole by no healthy node — is placed
on the workers that can take it (:mod:`sollol_llamacpp.placement`), and run through a coordinator
this plugin starts and reuses. Everything here belongs to one router: two routers in a process
keep their own coordinators, workers, catalogue and calibration.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import psutil
from aiohttp import web
from attrs import define, evolve, field
from prometheus_client.core import Metric

from sollol_core.config import Settings, SettingsSection
from sollol_core.errors import BackendError
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.http import Sessions
from sollol_core.panels import Panel
from sollol_core.types import (
    Decision,
    Endpoint,
    FleetSnapshot,
    Health,
    InferenceRequest,
    NodeSnapshot,
    Role,
    ShardPlan,
    model_key,
)
from sollol_llamacpp import calibration, catalogue, server_http, views
from sollol_llamacpp.agent_workers import AgentWorkers, add_agent_routes
from sollol_llamacpp.binaries import Binaries, BinariesNotFound, require_binaries
from sollol_llamacpp.calibration import Calibration
from sollol_llamacpp.coordinator import CoordinatorError, Coordinators
from sollol_llamacpp.estimate import ModelFootprint, read_footprint
from sollol_llamacpp.facts import ShardingFacts
from sollol_llamacpp.placement import place, worker_needs
from sollol_llamacpp.rpc_probe import probe_rpc, snapshot_from
from sollol_llamacpp.settings import SECTION, LlamacppSettings
from sollol_llamacpp.sweep import LocalhostWorker, RpcSweep, implicit_workers_wanted
from sollol_llamacpp.workers import KIND as RPC_KIND
from sollol_llamacpp.workers import WorkerPool

log = logging.getLogger(__name__)

SERVER_KIND = "llamacpp"


@define(eq=False)  # a plugin object is itself: hashable, compared by identity
class LlamacppPlugin:
    """What the plugin holds for one router, and its hooks."""

    settings: Settings = field(factory=Settings)
    sessions: Sessions = field(factory=Sessions)
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
    sweeper: RpcSweep = field(factory=RpcSweep)
    localhost_worker: LocalhostWorker = field(factory=LocalhostWorker)
    #: The last shard plan run per model key: which layers sit on which worker.
    plans: dict[str, ShardPlan] = field(factory=dict)
    _facts: ShardingFacts | None = None

    @property
    def options(self) -> LlamacppSettings:
        return self.settings.section(LlamacppSettings)

    def find_binaries(self) -> Binaries:
        if self.binaries is None:
            configured = Path(self.options.bin_dir) if self.options.bin_dir else None
            self.binaries = require_binaries(configured_dir=configured)
        return self.binaries

    async def _binaries_or_install(self) -> Binaries:
        """The binaries; with ``install_if_missing`` and none found, built first (in a thread:
        the router keeps serving meanwhile; the installer shows its progress on stderr)."""
        try:
            return self.find_binaries()
        except BinariesNotFound:
            if not self.options.install_if_missing:
                raise
        from sollol_llamacpp.build import install

        log.warning("llama.cpp is not installed here: building it now (once; minutes)")
        self.binaries = await asyncio.to_thread(install)
        return self.binaries

    def gguf_for(self, model: str) -> Path | None:
        return next((p for n, p in self.models.items() if model_key(n) == model_key(model)), None)

    def _changed(self) -> None:
        self._facts = None

    # -- declarations ------------------------------------------------------------------------

    @staticmethod
    @hookimpl
    def sollol_settings_sections() -> SettingsSection:
        return SECTION

    @staticmethod
    @hookimpl
    def sollol_register_commands(cli: click.Group) -> None:
        from sollol_llamacpp.commands import demo, llamacpp

        cli.add_command(llamacpp)
        cli.add_command(demo)

    @staticmethod
    @hookimpl
    def sollol_agent_app(app: web.Application, settings: Settings) -> None:
        """``sollol agent`` on this machine starts and stops RPC workers when a router asks."""
        add_agent_routes(app, settings)

    # -- a router's run ----------------------------------------------------------------------

    @hookimpl
    def sollol_lifespan(self, settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
        return self._running(settings)

    @contextlib.asynccontextmanager
    async def _running(self, settings: Settings) -> AsyncIterator[None]:
        if self.coordinators is not None:
            raise RuntimeError("this llama.cpp plugin object already serves a running router; "
                               "each router needs its own (Plugins.load)")
        self.settings = settings
        self.coordinators = Coordinators(self.find_binaries, on_change=self._changed)
        watcher: asyncio.Task[None] | None = None
        async with self.sessions.hold():
            try:
                await self._ensure_local_workers()
                watcher = asyncio.create_task(self.coordinators.watch(self.options.idle_unload_s))
                yield
            finally:
                if watcher is not None and not watcher.done():
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                await self.coordinators.stop()
                self.coordinators = None
                self._changed()
                if self.pool is not None:
                    await self.pool.stop()
                    self.pool = None
                await self.agent_workers.release(settings, self.sessions)

    async def _ensure_local_workers(self) -> None:
        """As many local RPC workers as ``local_workers`` asks (a router reconfigured while it
        runs, e.g. by ``HybridRouter(auto_setup_rpc=True)`` over a started pool, gets them at
        its next discovery)."""
        missing = self.options.local_workers - (len(self.pool.workers) if self.pool else 0)
        if missing <= 0:
            return
        if self.pool is None:
            self.pool = WorkerPool(await self._binaries_or_install())
        log.info("starting %d local RPC worker(s)", missing)
        await self.pool.start(missing)

    @hookimpl
    def sollol_discover(self, settings: Settings) -> Awaitable[Sequence[Endpoint]]:
        return self._discover(settings)

    async def _discover(self, settings: Settings) -> Sequence[Endpoint]:
        self.settings = settings
        self.models, footprints, unreadable = await asyncio.to_thread(
            _catalogue_with_footprints, settings, frozenset(self.footprints))
        self.footprints.update(footprints)
        for key, why in unreadable.items():
            if key not in self.unreadable:
                log.warning("%s", why)
        self.unreadable = unreadable
        self._changed()
        options = settings.section(LlamacppSettings)
        if self.coordinators is not None:  # running: changed settings may want more workers
            await self._ensure_local_workers()
        found = [Endpoint.parse(RPC_KIND, a, default_port=50052) for a in options.rpc_backends]
        found += [Endpoint.parse(SERVER_KIND, a, default_port=8080) for a in options.servers]
        if self.pool is not None:
            found += [w.endpoint for w in self.pool.workers]
        found += await self.agent_workers.ensure(settings, self.sessions)
        local = self.localhost_worker.endpoint
        if implicit_workers_wanted(settings) and local.key not in {e.key for e in found}:
            # held by our coordinator, it would not answer HELLO; it was found before it was held
            if self._holder_of(local) is not None \
                    or await self.localhost_worker.answers(settings.discovery.timeout_s):
                found.append(local)
        if settings.discovery.subnets:
            found += await self.sweeper.sweep(settings.discovery.subnets,
                                              settings.discovery.timeout_s)
        return found

    @hookimpl
    def sollol_probe(self, endpoint: Endpoint,
                     settings: Settings) -> Awaitable[NodeSnapshot] | None:
        if endpoint.kind == SERVER_KIND:
            return self._probe_server(endpoint, settings)
        if endpoint.kind != RPC_KIND:
            return None
        return self._probe_worker(endpoint, settings)

    async def _probe_server(self, endpoint: Endpoint, settings: Settings) -> NodeSnapshot:
        async with self.sessions.session() as session:
            return await server_http.probe_server(session, endpoint, settings.health.timeout_s)

    async def _probe_worker(self, endpoint: Endpoint, settings: Settings) -> NodeSnapshot:
        holder = self._holder_of(endpoint)
        if holder is not None:  # held: a probe would wait for a HELLO that never comes
            if await self._held_worker_gone(endpoint) and self.coordinators is not None:
                # gone under a live coordinator: noticed now, not when a request fails
                self.coordinators.worker_lost(endpoint)
                return evolve(NodeSnapshot.down(
                    endpoint, f"stopped answering while held by the coordinator for {holder}"),
                    role=Role.WORKER)
            return NodeSnapshot(
                endpoint=endpoint, health=Health.BUSY, taken_at=time.time(), role=Role.WORKER,
                detail=f"held by the coordinator for {holder}",
                models=catalogue.as_model_infos(self.models, holder))
        status = await probe_rpc(endpoint.host, endpoint.port,
                                 timeout_s=min(settings.health.timeout_s, 1.0))
        snapshot = snapshot_from(endpoint, status)
        return evolve(snapshot, models=catalogue.as_model_infos(self.models, None))

    async def _held_worker_gone(self, endpoint: Endpoint) -> bool:
        """Whether a worker a running coordinator holds has gone away under it."""
        if self.coordinators is None:
            return False
        pids = [c.child.pid for c in self.coordinators.running.values()
                if c.alive and endpoint.key in {w.key for w in c.workers}]
        for pid in pids:
            if await asyncio.to_thread(_peer_gone, pid, endpoint):
                return True
        return False

    def _holder_of(self, endpoint: Endpoint) -> str | None:
        """The model whose coordinator holds (or is connecting to) this worker, if any."""
        coordinators = self.coordinators
        if coordinators is None:
            return None
        for coordinator in coordinators.running.values():
            if coordinator.alive and endpoint.key in {w.key for w in coordinator.workers}:
                return coordinator.model
        for key, workers in coordinators.starting.items():
            if endpoint.key in {w.key for w in workers}:
                return next((name for name in self.models if model_key(name) == key), key)
        return None

    # -- placement ---------------------------------------------------------------------------

    @hookimpl
    def sollol_fleet_facts(self) -> ShardingFacts:
        """What placement needs to know from this plugin, rebuilt only when it changed."""
        if self._facts is None:
            held: dict[str, frozenset[str]] = {}
            busy: set[str] = set()
            if self.coordinators is not None:
                for key, c in self.coordinators.running.items():
                    if c.alive:
                        held[key] = frozenset(w.key for w in c.workers)
                    if c.in_flight:
                        busy.add(key)
                for key, workers in self.coordinators.starting.items():
                    held[key] = held.get(key, frozenset()) | {w.key for w in workers}
                    busy.add(key)
            self._facts = ShardingFacts(
                footprints=dict(self.footprints), unreadable=dict(self.unreadable), held=held,
                factors=self.calibration.factors(), busy=frozenset(busy))
        return self._facts

    @hookimpl
    def sollol_place(self, request: InferenceRequest, fleet: FleetSnapshot,
                     settings: Settings) -> Decision | None:
        facts = fleet.fact(ShardingFacts)
        return place(request, fleet, settings.section(LlamacppSettings),
                     facts if facts is not None else ShardingFacts())

    # -- execution ---------------------------------------------------------------------------

    @hookimpl
    def sollol_execute(self, request: InferenceRequest, decision: Decision,
                       settings: Settings) -> AsyncIterator[Chunk] | None:
        if decision.plan is not None:
            return self._run_sharded(request, decision.plan, settings)
        if decision.target is not None and decision.target.kind == SERVER_KIND:
            return self._run_on(f"http://{decision.target.address}", request,
                                decision.target.address)
        return None

    async def _run_on(self, base_url: str, request: InferenceRequest,
                      label: str) -> AsyncIterator[Chunk]:
        async with self.sessions.session() as session:
            async for chunk in server_http.run(session, base_url, request, label):
                yield chunk

    async def _run_sharded(self, request: InferenceRequest, plan: ShardPlan,
                           settings: Settings) -> AsyncIterator[Chunk]:
        gguf = self.gguf_for(request.model)
        coordinators = self.coordinators
        if gguf is None or coordinators is None:
            # a node fault, not the request's: another node that holds the model may run it
            raise BackendError(f"no GGUF file is known for {request.model}")
        options = settings.section(LlamacppSettings)
        if plan.layers:
            self.plans[model_key(request.model)] = plan
        sent = 0
        for attempt in (1, 2):  # a coordinator that crashed before answering is restarted once
            try:
                coordinator = await coordinators.ensure(
                    request.model, gguf, plan.workers, plan.tensor_split,
                    context_size=options.context_size, parallel=options.parallel,
                    timeout_s=options.coordinator_timeout_s, gpu_layers=options.gpu_layers)
            except CoordinatorError as exc:  # cannot start there: let the router look elsewhere
                raise CoordinatorError(str(exc), exclude=tuple(w.key for w in plan.workers)
                                       ) from None
            if not coordinator.calibrated:
                coordinator.calibrated = True
                self._learn(request.model, plan, coordinator.child.log_path, options)
            coordinator.in_flight += 1  # never unloaded as idle while it answers
            if coordinator.in_flight == 1:
                self._changed()  # busy now: placement must not give its workers away
            try:
                async for chunk in self._run_on(coordinator.url, request,
                                                f"coordinator {coordinator.url}"):
                    sent += 1
                    yield chunk
                return
            except BackendError:
                await asyncio.sleep(0.2)
                if coordinator.alive or attempt == 2 or sent:  # sent chunks cannot be taken back
                    raise
                log.warning("the coordinator for %s died mid-request; restarting it",
                            request.model)
                await coordinators.forget_dead()
            finally:
                coordinator.in_flight -= 1
                coordinator.last_used = time.monotonic()
                if not coordinator.in_flight:
                    self._changed()

    def _learn(self, model: str, plan: ShardPlan, log_path: Path,
               options: LlamacppSettings) -> None:
        footprint = self.footprints.get(model_key(model))
        if footprint is None or not plan.layers:
            return
        needs = worker_needs(footprint, options, self.calibration.factor(model))
        planned = calibration.planned_bytes(needs, plan.workers, plan.layers)
        learnt = self.calibration.learn(model, log_path, planned)
        if learnt is not None:
            self._changed()
            log.info("%s on RPC workers: estimated %.0f MiB, llama.cpp allocated %.0f MiB; "
                     "correction factor now %.3f", model, learnt.estimated_bytes / 2**20,
                     learnt.measured_bytes / 2**20, learnt.factor)

    # -- what it shows -----------------------------------------------------------------------

    @hookimpl
    def sollol_status(self) -> Mapping[str, Any]:
        return views.status(self.coordinators, self.pool, self.calibration, self.models)

    @hookimpl
    def sollol_metrics(self) -> Iterable[Metric]:
        return views.metrics(self.coordinators, self.pool)

    @hookimpl
    def sollol_dashboard_panels(self) -> Panel:
        return views.coordinators_panel(self.coordinators, self.plans)


def _peer_gone(pid: int, endpoint: Endpoint) -> bool:
    """Whether the coordinator ``pid``'s connections to ``endpoint`` were all closed by the
    worker (it exited: its kernel closed them). Read from the coordinator's own sockets: a
    held worker is never sent anything (a probe of its own would queue behind the coordinator
    and fill its accept queue)."""
    try:
        sockets = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return False
    literal = _is_ip(endpoint.host)
    to_worker = [c for c in sockets if c.raddr and c.raddr.port == endpoint.port
                 and (not literal or c.raddr.ip == endpoint.host)]
    return bool(to_worker) and all(c.status in _CLOSED_BY_PEER for c in to_worker)


_CLOSED_BY_PEER = frozenset({psutil.CONN_CLOSE_WAIT, psutil.CONN_LAST_ACK, psutil.CONN_CLOSE})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _catalogue_with_footprints(
        settings: Settings, known: frozenset[str],
) -> tuple[dict[str, Path], dict[str, ModelFootprint], dict[str, str]]:
    """The shardable models, and what each one not in ``known`` needs from its GGUF's header
    (read in a thread: the caller stores the results on the event loop). Unreadable files come
    back with the reason."""
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
