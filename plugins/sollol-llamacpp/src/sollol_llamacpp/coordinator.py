"""Coordinators: ``llama-server --rpc`` processes SOLLOL starts, waits for, reuses, restarts and
unloads. One per model, each on its own set of workers (a worker serves one coordinator)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
from attrs import define, field

from sollol_core.errors import BackendError
from sollol_core.types import Endpoint, model_key
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.gguf_header import read_header
from sollol_llamacpp.processes import Child, ephemeral_port, log_file

log = logging.getLogger(__name__)


class CoordinatorError(BackendError):
    """A coordinator did not come up; the message names its log."""


@define
class Coordinator:
    model: str
    gguf: Path
    workers: tuple[Endpoint, ...]
    tensor_split: tuple[float, ...]
    port: int
    child: Child
    started_at: float = field(factory=time.time)
    last_used: float = field(factory=time.monotonic)
    ready_s: float = 0.0
    failed_checks: int = 0
    #: Whether its load log was compared with the estimate yet (the closed loop).
    calibrated: bool = False
    #: Requests it is answering now: a coordinator is never idle while it answers.
    in_flight: int = 0

    def idle_for(self, now: float) -> float:
        """Seconds since it last finished answering; 0 while it answers."""
        return 0.0 if self.in_flight else now - self.last_used

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.child.alive


#: llama.cpp's built-in chat templates for architectures whose GGUF may carry none (llama.cpp
#: would fall back to ChatML, which these models do not speak).
BUILTIN_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3"}


def fallback_chat_template(gguf: Path) -> str | None:
    """The built-in template to use when the GGUF has no ``tokenizer.chat_template``.
    Cached per file version: reading a GGUF's metadata takes seconds for a large vocabulary."""
    stat = gguf.stat()
    return _fallback_chat_template(str(gguf), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _fallback_chat_template(path: str, _size: int, _mtime_ns: int) -> str | None:
    keys = read_header(Path(path), stop_after={"tokenizer.chat_template",
                                               "general.architecture"}).metadata
    if "tokenizer.chat_template" in keys:
        return None
    return BUILTIN_TEMPLATES.get(str(keys.get("general.architecture", "")))


def command(binaries: Binaries, gguf: Path, workers: Sequence[Endpoint],
            tensor_split: Sequence[float], port: int, context_size: int,
            parallel: int, chat_template: str | None = None, gpu_layers: int = 99) -> list[str]:
    argv = [str(binaries.llama_server), "-m", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "-c", str(context_size), "-np", str(parallel),
            "-ngl", str(gpu_layers),
            "--rpc", ",".join(w.address for w in workers),
            # No --embeddings: it makes the last worker reserve logits for a whole batch (512 x
            # vocabulary floats: +500 MiB for Gemma 3); embeddings go to whole-model nodes.
            # -lv 4: the load log then says what each RPC worker holds (the closed loop).
            "-lv", "4"]
    if tensor_split:
        argv += ["-ts", ",".join(f"{share:g}" for share in tensor_split)]
    if chat_template:  # a built-in name: only the non-Jinja path knows them
        argv += ["--no-jinja", "--chat-template", chat_template]
    return argv


async def wait_healthy(child: Child, url: str, what: str, timeout_s: float,
                      progress: Callable[[str], None]) -> float:
    """Until the llama-server ``child`` answers ``/health`` with 200 (seconds it took), with a
    progress line every 5 s; it exiting or the timeout raise an error that shows its log."""
    loop = asyncio.get_running_loop()
    started = last_note = loop.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() - started < timeout_s:
            if not child.alive:
                raise CoordinatorError(
                    f"llama-server for {what} exited with status {child.process.returncode} "
                    f"while loading; log: {child.log_path}\n{child.log_tail()}")
            try:
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return loop.time() - started
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            if loop.time() - last_note >= 5:
                last_note = loop.time()
                progress(f"loading {what}: {loop.time() - started:.0f} s")
            await asyncio.sleep(0.1)
    raise CoordinatorError(
        f"llama-server for {what} not ready after {timeout_s:g} s; log: "
        f"{child.log_path}\n{child.log_tail()}")


async def launch(binaries: Binaries, model: str, gguf: Path, workers: Sequence[Endpoint],
                 tensor_split: Sequence[float], *, context_size: int, parallel: int,
                 timeout_s: float, progress: Callable[[str], None],
                 gpu_layers: int = 99) -> Coordinator:
    port = ephemeral_port()
    template = await asyncio.to_thread(fallback_chat_template, gguf)
    argv = command(binaries, gguf, workers, tensor_split, port, context_size, parallel,
                   template, gpu_layers)
    safe = model.replace("/", "_").replace(":", "_")
    child = await Child.spawn(argv, log_file("llama_coordinator_", f"{safe}-{port}"))
    coordinator = Coordinator(model, gguf, tuple(workers), tuple(tensor_split), port, child)
    try:
        coordinator.ready_s = await wait_healthy(
            child, coordinator.url, f"{model} over {len(workers)} workers", timeout_s, progress)
    except BaseException:
        await child.stop()
        raise
    log.info("coordinator for %s ready on %s in %.1f s", model, coordinator.url,
             coordinator.ready_s)
    return coordinator


@define
class Coordinators:
    """The running coordinators, by model; started on demand, reused, unloaded when idle."""

    binaries: Callable[[], Binaries]
    progress: Callable[[str], None] = log.info
    #: Called whenever the workers held change (the plugin's facts for placement are redone).
    on_change: Callable[[], None] = lambda: None
    running: dict[str, Coordinator] = field(factory=dict)
    #: Workers of coordinators being started, by model: claimed before llama-server connects.
    starting: dict[str, tuple[Endpoint, ...]] = field(factory=dict)
    _locks: dict[str, asyncio.Lock] = field(factory=dict)
    #: Coordinators being stopped: awaited by :meth:`stop`, so that none outlives SOLLOL even
    #: when whoever retired it was cancelled meanwhile.
    _stopping: set[asyncio.Task[None]] = field(factory=set)

    def claimed(self, *, besides: str = "") -> set[str]:
        """Keys of the workers held or being taken by coordinators of models other than
        ``besides`` (a worker serves one coordinator; placement must not offer them)."""
        skip = model_key(besides) if besides else ""
        held = {w.key for k, c in self.running.items() if k != skip and c.alive
                for w in c.workers}
        return held | {w.key for k, ws in self.starting.items() if k != skip for w in ws}

    async def ensure(self, model: str, gguf: Path, workers: Sequence[Endpoint],
                     tensor_split: Sequence[float], *, context_size: int, parallel: int,
                     timeout_s: float, gpu_layers: int = 99) -> Coordinator:
        """The coordinator for ``model`` on ``workers``: reused if it runs, else (re)started."""
        key = model_key(model)
        async with self._locks.setdefault(key, asyncio.Lock()):
            current = self.running.get(key)
            if current is not None and current.alive and (
                    {w.key for w in current.workers} == {w.key for w in workers}):
                current.last_used = time.monotonic()
                return current
            await self._free(model, {w.key for w in workers})
            if current is not None:
                await self._retire(key, "its workers changed" if current.alive else "it exited")
            self.starting[key] = tuple(workers)
            self.on_change()
            try:
                coordinator = await launch(self.binaries(), model, gguf, workers, tensor_split,
                                           context_size=context_size, parallel=parallel,
                                           timeout_s=timeout_s, progress=self.progress,
                                           gpu_layers=gpu_layers)
            finally:
                del self.starting[key]
                self.on_change()
            self.running[key] = coordinator
            self.on_change()
            return coordinator

    async def _free(self, model: str, wanted: set[str]) -> None:
        """Stop the idle coordinators of other models that hold any of ``wanted`` (placement
        planned over them); one that is starting, answering or busy being managed keeps its
        workers, and the request fails (another decision, a moment later, will know)."""
        key = model_key(model)
        starting = sorted(k for k, ws in self.starting.items()
                          if k != key and wanted & {w.key for w in ws})
        if starting:
            raise BackendError(f"the workers planned for {model} are being taken by the "
                               f"coordinator of {starting[0]}, starting now")
        for other, coordinator in list(self.running.items()):
            if other == key or not wanted & {w.key for w in coordinator.workers}:
                continue
            lock = self._locks.setdefault(other, asyncio.Lock())
            if coordinator.in_flight or lock.locked():
                raise BackendError(f"the workers planned for {model} are held by the "
                                   f"coordinator of {coordinator.model}, which is answering")
            async with lock:
                await self._retire(other, f"its workers are wanted for {model}")

    def _retire_soon(self, key: str, why: str) -> asyncio.Task[None] | None:
        """Take the coordinator out of service now and stop its process in a task of its own
        (SIGTERM, then SIGKILL: it may take seconds)."""
        coordinator = self.running.pop(key, None)
        if coordinator is None:
            return None
        self.on_change()
        log.info("stopping the coordinator for %s: %s", coordinator.model, why)
        task = asyncio.create_task(coordinator.child.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return task

    async def _retire(self, key: str, why: str) -> None:
        task = self._retire_soon(key, why)
        if task is not None:
            await asyncio.shield(task)  # a cancelled caller leaves it to finish

    async def unload_idle(self, idle_s: float) -> None:
        now = time.monotonic()
        for key, coordinator in list(self.running.items()):
            if coordinator.idle_for(now) >= idle_s:
                async with self._locks.setdefault(key, asyncio.Lock()):
                    if coordinator.idle_for(time.monotonic()) >= idle_s:
                        await self._retire(key, f"idle for {idle_s:g} s")

    async def forget_dead(self) -> list[str]:
        """Reap coordinators that exited; their models restart on the next request."""
        gone = [k for k, c in self.running.items() if not c.alive]
        for key in gone:
            await self._retire(key, "it exited")
        return gone

    async def stop(self) -> None:
        for key in list(self.running):
            self._retire_soon(key, "SOLLOL is stopping")
        while self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def worker_lost(self, worker: Endpoint) -> str | None:
        """A worker a coordinator holds is gone: that coordinator is taken out of service at
        once and stopped (its model is planned again, over the workers left, on its next
        request). The model, if any."""
        for key, coordinator in list(self.running.items()):
            if worker.key in {w.key for w in coordinator.workers}:
                self._retire_soon(key, f"its RPC worker {worker.address} is gone")
                return coordinator.model
        return None

    async def check_health(self, session: aiohttp.ClientSession) -> None:
        """A coordinator whose ``/health`` fails three times in a row is stopped; its model
        starts afresh on the next request."""
        for key, coordinator in list(self.running.items()):
            try:
                async with session.get(f"{coordinator.url}/health",
                                       timeout=aiohttp.ClientTimeout(total=5)) as response:
                    healthy = response.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                healthy = False
            coordinator.failed_checks = 0 if healthy else coordinator.failed_checks + 1
            if coordinator.failed_checks >= 3:
                await self._retire(key, "its /health failed three times")

    async def watch(self, idle_s: float, every_s: float = 2.0) -> None:
        """Background duty while a router runs: reap crashed coordinators, stop unhealthy ones,
        unload idle ones."""
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await self.forget_dead()
                    await self.check_health(session)
                    await self.unload_idle(idle_s)
                except Exception:
                    log.exception("coordinator watch failed")
