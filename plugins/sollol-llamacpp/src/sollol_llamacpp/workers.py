"""Local RPC workers that SOLLOL starts (the original SOLLOL's ``auto_setup_rpc``).

Workers bind 127.0.0.1 unless told otherwise: the RPC protocol has no authentication and no
encryption, so exposing a worker needs an explicit ``allow_remote`` and prints a warning. Every
worker is supervised: restarted on the same port if it dies, stopped with its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from attrs import define, field

from sollol_core.errors import SollolError
from sollol_core.types import Endpoint, is_loopback
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.processes import Child, free_ports, log_file, wait_for_port

log = logging.getLogger(__name__)

KIND = "llamacpp-rpc"
FIRST_PORT = 50052
UNAUTHENTICATED_WARNING = (
    "warning: RPC workers on {host} accept anyone who can reach that address: the llama.cpp RPC "
    "protocol has no authentication and no encryption. Expose them only on a network you trust.")


class WorkerError(SollolError):
    pass


@define
class LocalWorker:
    host: str
    port: int
    child: Child
    #: The command line it was started with: a restart runs the same (threads included).
    argv: tuple[str, ...]
    restarts: int = 0

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(KIND, self.host, self.port, source="sollol")


@define
class WorkerPool:
    """The RPC workers one SOLLOL process started, and their supervisor."""

    binaries: Binaries
    warn: Callable[[str], None] = print
    workers: list[LocalWorker] = field(factory=list)
    _supervisor: asyncio.Task[None] | None = None
    _stopping: bool = False

    async def start(self, count: int, *, host: str = "127.0.0.1", first_port: int = FIRST_PORT,
                    allow_remote: bool = False, threads: int | None = None) -> list[Endpoint]:
        """Start ``count`` workers on free ports from ``first_port``; return their endpoints."""
        if count < 1:
            raise WorkerError(f"expected at least 1 worker, got {count}")
        if not is_loopback(host):
            if not allow_remote:
                raise WorkerError(
                    f"refusing to bind RPC workers to {host}: the RPC protocol is "
                    "unauthenticated; pass allow_remote (--allow-remote) to do it anyway")
            self.warn(UNAUTHENTICATED_WARNING.format(host=host))
        taken = [w.port for w in self.workers if w.host == host]
        started: list[LocalWorker] = []
        try:
            for port in free_ports(host, count, first_port, taken):
                started.append(await self._launch(host, port,
                                                  self._command(host, port, threads)))
        except BaseException:
            for worker in started:
                await worker.child.stop()
            raise
        self.workers.extend(started)
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(),
                                                   name="sollol-rpc-worker-supervisor")
        return [w.endpoint for w in started]

    def _command(self, host: str, port: int, threads: int | None) -> tuple[str, ...]:
        threads_flag = ("-t", str(threads)) if threads else ()
        return (str(self.binaries.rpc_server), "-H", host, "-p", str(port), *threads_flag)

    async def _launch(self, host: str, port: int, argv: tuple[str, ...],
                      restarts: int = 0) -> LocalWorker:
        child = await Child.spawn(argv, log_file("rpc-worker-", f"{host}-{port}"))
        try:
            await wait_for_port(host, port, 30.0, child)
        except (OSError, TimeoutError) as exc:
            await child.stop()
            raise WorkerError(f"RPC worker on {host}:{port} did not start ({exc}); "
                              f"log: {child.log_path}\n{child.log_tail()}") from None
        except BaseException:  # cancelled while it starts (its owner stops): no orphan
            await child.stop()
            raise
        return LocalWorker(host, port, child, argv, restarts)

    async def _supervise(self) -> None:
        """Restart workers that die; with back-off so a worker that cannot start does not spin."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            for worker in list(self.workers):
                if worker.child.alive or self._stopping:
                    continue
                await worker.child.stop()  # reap it
                delay = min(0.5 * 2 ** worker.restarts, 30.0)
                log.warning("RPC worker %s:%s exited (%s); restarting in %.1f s (log %s)",
                            worker.host, worker.port, worker.child.process.returncode, delay,
                            worker.child.log_path)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                if not self._holds(worker):
                    continue  # stopped on purpose (stop_worker) while we waited
                try:
                    restarted = await self._launch(worker.host, worker.port, worker.argv,
                                                   worker.restarts + 1)
                except WorkerError as exc:
                    log.error("%s", exc)
                    worker.restarts += 1
                    continue
                if self._holds(worker) and not self._stopping:
                    self.workers[self._index(worker)] = restarted
                else:
                    await restarted.child.stop()

    def _holds(self, worker: LocalWorker) -> bool:
        return any(w is worker for w in self.workers)

    def _index(self, worker: LocalWorker) -> int:
        return next(i for i, w in enumerate(self.workers) if w is worker)

    async def stop_worker(self, port: int, host: str | None = None) -> bool:
        """Stop the worker on ``port`` (and ``host``, if given); False if there is none."""
        worker = next((w for w in self.workers
                       if w.port == port and (host is None or w.host == host)), None)
        if worker is None:
            return False
        self.workers.remove(worker)
        await worker.child.stop()
        return True

    async def stop(self) -> None:
        """Stop every worker and the supervisor; nothing is left running."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await asyncio.gather(*(w.child.stop() for w in self.workers))
        self.workers.clear()
        self._stopping = False
