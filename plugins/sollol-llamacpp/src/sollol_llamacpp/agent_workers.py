"""RPC workers on an agent's machine: the routes ``sollol agent`` serves for this plugin, and the
router's side that asks agents for workers.

On the agent (added through ``sollol_agent_app``, behind the agent's token)::

    GET    /v1/workers           -> {"workers": [worker, ...]}
    POST   /v1/workers           {"count": n, "threads": t?, "first_port": p?}
                                 -> 201 {"workers": [the started ones]}
                                    (409, none started, past ``[agent] max_workers``)
    DELETE /v1/workers/{port}    -> {"stopped": [port]}      (404 if no worker has that port)
    DELETE /v1/workers           -> {"stopped": [ports]}

A worker is ``{"host", "port", "pid", "restarts", "alive"}``; ``host`` is the address the agent
advertises (``[agent] advertise``, else its bind address), the one a router's coordinator
connects to. Workers bind the agent's own address, supervised (restarted if they die, with the
same threads) and all stopped when the agent stops. An agent runs at most ``[agent] max_workers``
(default: one per CPU core) whatever its routers ask, each with at most one thread per core.

On the router, :class:`AgentWorkers` keeps ``[llamacpp] agent_workers`` workers running on each
agent of ``[discovery] agents``: asked on every discovery round (so an agent that starts late or
restarts gets them), released when the router stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from attrs import define, field, frozen

from sollol_core.agent.client import AgentClient, AgentError, agent_endpoints
from sollol_core.config import Settings
from sollol_core.convert import error_lines, structure, unstructure
from sollol_core.errors import SollolError
from sollol_core.http import Sessions
from sollol_core.types import Endpoint
from sollol_llamacpp.binaries import require_binaries
from sollol_llamacpp.settings import LlamacppSettings
from sollol_llamacpp.workers import FIRST_PORT, KIND, LocalWorker, WorkerPool

log = logging.getLogger(__name__)

#: Most workers one request may start (each is a process holding memory); the agent's
#: ``max_workers`` caps all requests together.
MAX_PER_REQUEST = 64
#: How long a router waits for an agent to start workers (each must listen first).
START_TIMEOUT_S = 60.0


# -- on the agent ------------------------------------------------------------------------------


class TooManyWorkers(SollolError):
    """Starting the workers asked for would pass the agent's cap."""


def cpu_cores() -> int:
    return os.cpu_count() or 1


def worker_cap(settings: Settings) -> int:
    """Most workers the agent runs at once: ``[agent] max_workers``, 0 meaning one per core."""
    return settings.agent.max_workers or cpu_cores()


@frozen
class StartWorkers:
    """The body of ``POST /v1/workers``."""

    count: int
    threads: int | None = None
    first_port: int = FIRST_PORT


@frozen
class WorkerInfo:
    """One worker as the agent describes it."""

    host: str
    port: int
    pid: int = 0
    restarts: int = 0
    alive: bool = True

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(KIND, self.host, self.port, source="agent")


@define
class AgentPool:
    """The workers one agent started, created on the first request (binaries are looked up
    then, so an agent without llama.cpp still serves telemetry)."""

    settings: Settings
    pool: WorkerPool | None = None
    lock: asyncio.Lock = field(factory=asyncio.Lock)

    def describe(self, worker: LocalWorker) -> WorkerInfo:
        return WorkerInfo(self.settings.agent.advertise, worker.port, worker.child.pid,
                          worker.restarts, worker.child.alive)

    def workers(self) -> list[WorkerInfo]:
        return [self.describe(w) for w in (self.pool.workers if self.pool else ())]

    async def start(self, wanted: StartWorkers) -> list[WorkerInfo]:
        """Start the workers asked for, or none (:class:`TooManyWorkers`) past the cap."""
        async with self.lock:  # two requests at once must not pick the same free ports
            running, cap = len(self.pool.workers) if self.pool else 0, worker_cap(self.settings)
            if running + wanted.count > cap:
                raise TooManyWorkers(
                    f"this agent runs {running} RPC workers and at most {cap} ([agent] "
                    f"max_workers, SOLLOL_AGENT_MAX_WORKERS): {wanted.count} more would pass "
                    "it; none started")
            if self.pool is None:
                bin_dir = self.settings.section(LlamacppSettings).bin_dir
                binaries = require_binaries(configured_dir=Path(bin_dir) if bin_dir else None)
                self.pool = WorkerPool(binaries, warn=log.warning)
            agent = self.settings.agent
            before = {w.port for w in self.pool.workers}
            await self.pool.start(wanted.count, host=agent.host, first_port=wanted.first_port,
                                  allow_remote=agent.allow_remote, threads=wanted.threads)
            return [self.describe(w) for w in self.pool.workers if w.port not in before]

    async def stop(self, port: int | None = None) -> list[int]:
        async with self.lock:
            if self.pool is None:
                return []
            ports = [w.port for w in self.pool.workers if port is None or w.port == port]
            if port is None:
                await self.pool.stop()
            else:
                for one in ports:
                    await self.pool.stop_worker(one)
            return ports


POOL = web.AppKey("sollol_llamacpp_agent_pool", AgentPool)


def add_agent_routes(app: web.Application, settings: Settings) -> None:
    app[POOL] = AgentPool(settings)
    app.router.add_get("/v1/workers", _list)
    app.router.add_post("/v1/workers", _start)
    app.router.add_delete("/v1/workers", _stop_all)
    app.router.add_delete("/v1/workers/{port:\\d+}", _stop_one)
    app.cleanup_ctx.append(_stop_on_exit)


async def _stop_on_exit(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[POOL].stop()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _list(request: web.Request) -> web.Response:
    return web.json_response({"workers": unstructure(request.app[POOL].workers())})


async def _start(request: web.Request) -> web.Response:
    try:
        wanted = structure(await request.json(), StartWorkers)
    except ValueError:
        return _error(400, 'expected a JSON body like {"count": 2}')
    except Exception as exc:
        problems = "; ".join(f"{key}: {message}" for key, message in error_lines(exc))
        return _error(400, f'expected a body like {{"count": 2}}: {problems}')
    if not 1 <= wanted.count <= MAX_PER_REQUEST:
        return _error(400, f"count: expected 1-{MAX_PER_REQUEST}, got {wanted.count}")
    cores = cpu_cores()
    if wanted.threads is not None and not 1 <= wanted.threads <= cores:
        return _error(400, f"threads: expected 1-{cores} (this machine's CPU cores), got "
                           f"{wanted.threads}")
    if not 0 < wanted.first_port < 65536:
        return _error(400, f"first_port: expected 1-65535, got {wanted.first_port}")
    try:
        started = await request.app[POOL].start(wanted)
    except TooManyWorkers as exc:
        return _error(409, str(exc))
    except (SollolError, OSError) as exc:  # no binaries, no free port, a worker did not start
        return _error(503, str(exc))
    return web.json_response({"workers": unstructure(started)}, status=201)


async def _stop_one(request: web.Request) -> web.Response:
    port = int(request.match_info["port"])
    stopped = await request.app[POOL].stop(port)
    if not stopped:
        return _error(404, f"no worker of this agent listens on port {port}")
    return web.json_response({"stopped": stopped})


async def _stop_all(request: web.Request) -> web.Response:
    return web.json_response({"stopped": await request.app[POOL].stop()})


# -- on the router -----------------------------------------------------------------------------


async def list_workers(client: AgentClient) -> list[WorkerInfo]:
    """The RPC workers an agent runs."""
    body = await client.call("GET", "/v1/workers")
    return _workers_in(client, body)


async def start_workers(client: AgentClient, count: int, *,
                        threads: int | None = None) -> list[WorkerInfo]:
    """Ask an agent to start ``count`` RPC workers; the started ones, at the address the agent
    advertises."""
    wanted: dict[str, Any] = {"count": count}
    if threads is not None:
        wanted["threads"] = threads
    body = await client.call("POST", "/v1/workers", body=wanted, timeout_s=START_TIMEOUT_S)
    return _workers_in(client, body)


async def stop_worker(client: AgentClient, port: int) -> None:
    await client.call("DELETE", f"/v1/workers/{port}")


def _workers_in(client: AgentClient, body: Any) -> list[WorkerInfo]:
    try:
        return structure(body["workers"], list[WorkerInfo])
    except Exception as exc:
        raise AgentError(f"agent {client.endpoint.address} answered workers this router cannot "
                         f"read ({exc!r})") from None


@define
class AgentWorkers:
    """The workers a router keeps on its agents (``[llamacpp] agent_workers`` on each)."""

    #: Agent address -> ports of the workers this router started there.
    started: dict[str, set[int]] = field(factory=dict)

    async def ensure(self, settings: Settings, sessions: Sessions) -> list[Endpoint]:
        """Every agent's workers, after starting the missing ones; an agent that fails is
        logged and skipped (asked again next round)."""
        wanted = settings.section(LlamacppSettings).agent_workers
        agents = agent_endpoints(settings)
        if not wanted or not agents:
            return []
        async with sessions.session() as session:
            found = await asyncio.gather(*(
                self._ensure_one(AgentClient.of(agent, session, settings), wanted)
                for agent in agents))
        return [w.endpoint for workers in found for w in workers]

    async def _ensure_one(self, client: AgentClient, wanted: int) -> list[WorkerInfo]:
        address = client.endpoint.address
        try:
            running = await list_workers(client)
            ours = self.started.get(address)
            if ours is not None:  # forget those the agent no longer runs (it restarted)
                ours &= {w.port for w in running}
            if len(running) < wanted:
                started = await start_workers(client, wanted - len(running))
                self.started.setdefault(address, set()).update(w.port for w in started)
                log.info("agent %s started RPC workers %s", address,
                         ", ".join(w.endpoint.address for w in started))
                running += started
        except AgentError as exc:
            log.warning("RPC workers on agents: %s", exc)
            return []
        return running

    async def release(self, settings: Settings, sessions: Sessions) -> None:
        """Stop the workers this router started on agents (best effort: an agent that is gone
        took its workers with it)."""
        started, self.started = self.started, {}
        if not started:
            return
        by_address = {a.address: a for a in agent_endpoints(settings)}
        async with sessions.session() as session:
            for address, ports in started.items():
                agent = by_address.get(address)
                if agent is None:
                    continue
                client = AgentClient.of(agent, session, settings)
                for port in sorted(ports):
                    try:
                        await stop_worker(client, port)
                    except AgentError as exc:
                        log.warning("could not stop RPC worker %s on agent %s: %s", port,
                                    address, exc)
