"""Processes, requests, the gateway child and accounting for benchmarks/llamacpp.py (split out
to keep each module one thing)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from attrs import evolve
from sollol_llamacpp.bridge import to_openai
from sollol_llamacpp.rpc_probe import probe_rpc
from sollol_llamacpp.settings import LlamacppSettings
from sollol_llamacpp.workers import KIND as RPC_KIND

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.gateway.serve import event_loop_factory
from sollol_core.router import Router
from sollol_core.types import InferenceRequest, Operation

MODEL = "gemma3:270m"
PROMPT = "Here is a short story about a lighthouse keeper who"
CONTEXT_SIZE = 1024
PARALLEL = 1
WORKERS = 2
SEED = 1
HOST = "127.0.0.1"
LLAMA_NAMES = frozenset({"llama-server", "ggml-rpc-server", "rpc-server"})
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 180.0
TARGET_RATIO = 0.97
#: A request during which other processes used more than this share of a core is flagged.
DISTURBED_SHARE = 0.10
#: The gateway child's log level (``--gateway-log``, INFO by default): its log goes to stderr.
LOG_ENV = "SOLLOL_BENCH_GATEWAY_LOG"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "llamacpp.json"


def note(message: str) -> None:
    print(f"llamacpp: {message}", file=sys.stderr, flush=True)


# -- requests ------------------------------------------------------------------------------------
def ollama_body(max_tokens: int) -> dict[str, Any]:
    """The gateway's request: Ollama generate, raw, streamed."""
    return {"model": MODEL, "prompt": PROMPT, "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": max_tokens, "seed": SEED}}


def openai_body(max_tokens: int) -> dict[str, Any]:
    """What SOLLOL sends its coordinator for :func:`ollama_body` (the same bytes, sent here)."""
    request = InferenceRequest(operation=Operation.GENERATE, model=MODEL, stream=True,
                               body=ollama_body(max_tokens))
    path, body = to_openai(request)
    assert path == "/v1/completions", path
    return body


def client() -> aiohttp.ClientSession:
    """The load generator's session: a fresh connection per request, for every setup alike.
    llama-server (b11434) closes the connection after a streamed reply although it answers
    ``Keep-Alive``; a pooled connection fails the next request with "Server disconnected"."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


@dataclass
class Sample:
    """One streamed reply, timed from sending the request."""

    first_token_s: float = float("nan")
    last_token_s: float = float("nan")
    total_s: float = float("nan")
    tokens: int = 0
    server_tokens: int | None = None
    server_tokens_per_s: float | None = None
    sollol_attempts: int | None = None  # X-Sollol-Attempts (the gateway only)
    #: CPU used meanwhile by processes outside this run, in cores (0.5: half a core).
    foreign_cpu_share: float = 0.0
    gateway_cpu_ms: float | None = None  # the gateway process's CPU for this request
    text: str = ""

    @property
    def disturbed(self) -> bool:
        return self.foreign_cpu_share > DISTURBED_SHARE

    @property
    def tokens_per_s(self) -> float:
        if self.tokens < 2 or self.last_token_s <= self.first_token_s:
            return float("nan")
        return (self.tokens - 1) / (self.last_token_s - self.first_token_s)


class ReplyError(RuntimeError):
    pass


async def stream_once(session: aiohttp.ClientSession, url: str, api: str, max_tokens: int,
                      started: float | None = None) -> Sample:
    """One streamed request; ``api`` is "openai" (SSE from llama-server) or "ollama" (NDJSON from
    the gateway). ``started`` (perf_counter) defaults to now."""
    clock = time.perf_counter
    start = clock() if started is None else started
    sample = Sample()
    pieces: list[str] = []
    final: dict[str, Any] = {}
    if api == "openai":
        endpoint, body = f"{url}/v1/completions", openai_body(max_tokens)
    else:
        endpoint, body = f"{url}/api/generate", ollama_body(max_tokens)
    async with session.post(endpoint, json=body) as response:
        if response.status != 200:
            raise ReplyError(f"{endpoint}: status {response.status}: "
                             f"{(await response.read())[:300]!r}")
        if api == "ollama":
            if not response.headers.get("X-Sollol-Backend", "").startswith("sharded"):
                raise ReplyError(f"{endpoint}: not sharded: X-Sollol-Backend "
                                 f"{response.headers.get('X-Sollol-Backend')!r}, reason "
                                 f"{response.headers.get('X-Sollol-Reason')!r}")
            sample.sollol_attempts = int(response.headers.get("X-Sollol-Attempts", "0"))
        async for raw in response.content:
            line = raw.strip()
            if api == "openai":
                if not line.startswith(b"data:"):
                    continue
                line = line[5:].strip()
                if line == b"[DONE]":
                    continue  # read to the end, so that the connection can be reused
            if not line:
                continue
            event = json.loads(line)
            if "error" in event:
                raise ReplyError(f"{endpoint}: {event['error']}")
            if api == "openai":
                text = "".join(str(c.get("text") or "") for c in event.get("choices") or [])
                if "timings" in event:
                    final = event["timings"]
            else:
                text = str(event.get("response") or "")
                if event.get("done"):
                    final = event
            if text:
                now = clock() - start
                if not pieces:
                    sample.first_token_s = now
                sample.last_token_s = now
                pieces.append(text)
        sample.total_s = clock() - start
    sample.tokens = len(pieces)
    sample.text = "".join(pieces)
    if api == "openai" and final:
        sample.server_tokens = final.get("predicted_n")
        sample.server_tokens_per_s = final.get("predicted_per_second")
    elif final.get("eval_count") and final.get("eval_duration"):
        sample.server_tokens = int(final["eval_count"])
        sample.server_tokens_per_s = final["eval_count"] / (final["eval_duration"] / 1e9)
    if sample.tokens < 2:
        raise ReplyError(f"{endpoint}: {sample.tokens} tokens streamed: {sample.text!r}")
    return sample


# -- processes -----------------------------------------------------------------------------------
def _die_with_parent() -> None:  # in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Launched:
    argv: list[str]
    process: subprocess.Popen[bytes]
    url: str
    launched_at: float  # perf_counter


@contextlib.contextmanager
def llama_server(argv: list[str], port: int, log: Path) -> Iterator[Launched]:
    """``argv`` running, with its output in ``log``; killed and reaped on the way out."""
    with log.open("wb") as out:
        launched_at = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    try:
        yield Launched(argv, process, f"http://{HOST}:{port}", launched_at)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(log: Path, lines: int) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_healthy(server: Launched, log: Path) -> float:
    """Seconds from launch until ``/health`` answers 200 (503 while the model loads)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.perf_counter() - server.launched_at < START_TIMEOUT_S:
            if server.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {server.process.returncode}; "
                                   f"log {log}:\n{log_tail(log, 15)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(f"{server.url}/health") as response:
                    if response.status == 200:
                        return time.perf_counter() - server.launched_at
            await asyncio.sleep(0.05)
    raise RuntimeError(f"llama-server not healthy after {START_TIMEOUT_S:g} s; log {log}")


async def wait_workers_free(workers: Sequence[str]) -> None:
    """Until every worker answers HELLO: one a coordinator just left needs a moment."""
    for address in workers:
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while (await probe_rpc(host, int(port), timeout_s=0.5)).state != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError(f"RPC worker {address} stays busy")
            await asyncio.sleep(0.1)


# -- the gateway (a child process) ---------------------------------------------------------------
def gateway_settings(workers: Sequence[str], gguf: Path, bin_dir: Path) -> Settings:
    """As `sollol serve` would load them from RPC_BACKENDS and a [llamacpp] models table."""
    base = Settings.load(environ={
        "RPC_BACKENDS": ",".join(workers), "SOLLOL_LOAD_PLUGINS": "llamacpp",
        "SOLLOL_LLAMACPP_BIN_DIR": str(bin_dir), "SOLLOL_COORDINATOR_TIMEOUT": "120",
        "SOLLOL_HOST": HOST})
    own = base.section(LlamacppSettings)
    return base.with_sections(evolve(own, models={MODEL: str(gguf)}, context_size=CONTEXT_SIZE,
                                     parallel=PARALLEL))


def _gateway(conn: Connection, workers: list[str], gguf: str, bin_dir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=os.environ.get(LOG_ENV, "INFO"), stream=sys.stderr,
                        format="llamacpp: gateway: %(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_gateway_async(conn, workers, Path(gguf), Path(bin_dir)))
    finally:
        conn.close()


async def _gateway_async(conn: Connection, workers: list[str], gguf: Path, bin_dir: Path) -> None:
    router = Router.create(gateway_settings(workers, gguf, bin_dir))
    runner = web.AppRunner(create_app(router), handle_signals=False, access_log=None)
    await runner.setup()  # starts the router: plugins' lifespans, then the probes
    try:
        await web.TCPSite(runner, HOST, 0).start()
        conn.send(f"http://{HOST}:{runner.addresses[0][1]}")
        loop = asyncio.get_running_loop()
        told = asyncio.Event()
        loop.add_reader(conn.fileno(), told.set)  # a message, or EOF when the parent dies
        try:
            await told.wait()
        finally:
            loop.remove_reader(conn.fileno())
    finally:
        await runner.cleanup()  # stops the router, and with it the coordinator


@dataclass
class Gateway:
    process: BaseProcess
    conn: Connection
    url: str = ""


@contextlib.contextmanager
def gateway(workers: list[str], gguf: Path, bin_dir: Path) -> Iterator[Gateway]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_gateway, args=(theirs, workers, str(gguf), str(bin_dir)),
                              name="bench-gateway", daemon=True)
    process.start()
    theirs.close()
    running = Gateway(process, ours)
    try:
        if not ours.poll(60):
            raise RuntimeError("the gateway did not start within 60 s")
        try:
            running.url = ours.recv()
        except EOFError:
            raise RuntimeError(f"the gateway died while starting (exit code "
                               f"{process.exitcode})") from None
        yield running
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        process.join(20)  # it stops its coordinator first (SIGTERM, then SIGKILL after 5 s)
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        ours.close()


async def wait_workers_up(url: str, count: int) -> None:
    """Until the gateway's fleet shows ``count`` RPC workers up (its first probes answered)."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with session.get(f"{url}/api/sollol/status") as response:
                    status = await response.json()
                nodes = status.get("fleet", {}).get("nodes", [])
                up = [n for n in nodes if n["endpoint"]["kind"] == RPC_KIND
                      and n["health"] == "up"]
                if len(up) >= count:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not see {count} RPC workers up within 30 s")
            await asyncio.sleep(0.1)


async def wait_fleet_settled(url: str, count: int) -> tuple[float, bool]:
    """Until the gateway's fleet shows its RPC workers held by the coordinator (model loaded).

    A probe that starts while SOLLOL's coordinator is still loading (before SOLLOL records it)
    sees the workers busy with no model, and placement refuses them ("no healthy node", 503)
    until the next probe. Returns (seconds waited, whether that state was seen)."""
    started = time.monotonic()
    stale = False
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                async with session.get(f"{url}/api/sollol/status") as response:
                    status = await response.json()
                nodes = [n for n in status.get("fleet", {}).get("nodes", [])
                         if n["endpoint"]["kind"] == RPC_KIND]
                held = [n for n in nodes if any(m.get("loaded") for m in n.get("models", []))]
                stale = stale or any(n["health"] == "busy" and n not in held for n in nodes)
                if len(held) >= count:
                    return time.monotonic() - started, stale
            if time.monotonic() - started > 30:
                raise RuntimeError("the gateway's fleet did not show its workers held by the "
                                   "coordinator within 30 s")
            await asyncio.sleep(0.1)


# -- leftovers -----------------------------------------------------------------------------------
class Tracker:
    """The llama.cpp processes this run started, directly or through the gateway."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> create_time

    def scan(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() in LLAMA_NAMES:
                        self.seen.setdefault(child.pid, child.create_time())

    def left(self, grace_s: float = 10.0) -> list[psutil.Process]:
        """Those still running after ``grace_s``."""
        self.scan()
        deadline = time.monotonic() + grace_s
        while True:
            alive = []
            for pid, created in self.seen.items():
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    if (process.create_time() == created and process.name() in LLAMA_NAMES
                            and process.status() != psutil.STATUS_ZOMBIE):
                        alive.append(process)
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


# -- CPU accounting ------------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds used by this process and its descendants (workers, llama-servers, the gateway
    and its coordinator), and by everything else on the machine: the last is *foreign* load, which
    on a 2-core machine disturbs the figures."""

    def __init__(self) -> None:
        self.processes: list[psutil.Process] = []

    def refresh(self) -> None:
        """Take the current process tree (call once every process of a phase is up)."""
        me = psutil.Process()
        self.processes = [me, *me.children(recursive=True)]

    def read(self) -> tuple[float, dict[int, float]]:
        """(busy CPU seconds of the whole machine, CPU seconds per process of ours)."""
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        ours: dict[int, float] = {}
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                ours[process.pid] = times.user + times.system
        return busy, ours


