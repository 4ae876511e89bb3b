"""Benchmark: what the gateway adds to a request.

One Ollama emulator (64 slots, as fast as it can answer: no latency, no pacing, 8 words) is the
*direct* target; a SOLLOL gateway whose only Ollama node is that emulator, with
``ollama_parallel`` 64 so it never queues, is the *gateway* target. The same load goes to both:
``POST /api/generate`` with ``stream`` false and then true, at 1, 10 and 50 requests in flight
over an aiohttp connection pool, after a warm-up. Per-request latency (and, streaming, the time to
the first NDJSON line) gives p50 and p99; requests over wall time gives requests/s. The gateway's
cost is the difference: added latency and the gateway/direct throughput ratio. The CPU time each
server process spends per request (from /proc, Linux only) is reported too: the machine is small,
so throughput is bound by CPU, and the gateway's CPU per request is what decides the ratio.

Three processes, so that no two of client, gateway and emulator share an event loop or a GIL:
the emulator and the gateway each run in a child process (``multiprocessing``, spawn), the load
generator runs in this one. Every response is checked (status 200, the emulator's words, ``done``
true, and on the gateway the ``X-Sollol-Backend`` header); any failure makes the run exit 1. The
children stop when this process stops them, and by themselves if it dies (their pipe closes).

The figures are compared with their targets in docs/benchmarks.md, not in tests.

    python benchmarks/gateway.py [--quick] [--output PATH] [--profile PATH]

``--profile PATH`` runs the gateway under cProfile and writes its stats (``pstats``) to PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from proxies import aiohttp_proxy, nginx_binary, start_nginx, stop_nginx  # benchmarks folder
from report import environment, percentile, write
from sollol_ollama.testing import OllamaEmulator

from sollol_core.config import Settings
from sollol_core.connections import GuardedSite
from sollol_core.gateway.app import create_app
from sollol_core.gateway.serve import event_loop_factory, limits_of
from sollol_core.listening import app_runner
from sollol_core.router import Router

CONCURRENCY = (1, 10, 50)
MODEL = "llama3.2"
PARALLEL = 64
#: 0 turns the emulator's pacing off. Any pacing is an ``asyncio.sleep`` per word, and an idle
#: event loop waits at least 1 ms for a timer (epoll's resolution): at 100,000 tokens/s a lone
#: request took ~9 ms, all of it sleeping, which hides the gateway's cost.
TOKENS_PER_S = 0.0
REPLY_WORDS = 8
EMULATOR_NAME = "bench"
#: The words the emulator answers with (see its ``_pieces``): its name, then " word1" ...
EXPECTED_TEXT = EMULATOR_NAME + "".join(f" word{i}" for i in range(1, REPLY_WORDS))
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "gateway.json"


# -- the servers ---------------------------------------------------------------------------------
#: The targets: ``direct`` is the emulator itself; the others are proxies in front of it.
DIRECT, SOLLOL, AIOHTTP_PROXY, NGINX = "direct", "sollol", "aiohttp-proxy", "nginx"


def _serve(role: str, conn: Connection, upstream: str, profile: str) -> None:
    """A child's entry point: run ``role`` until the parent says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    profiler = cProfile.Profile() if profile else None
    try:
        # The proxies run on the event loop `sollol serve` uses; the emulator on plain asyncio.
        factory = event_loop_factory() if role != DIRECT else None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve_async(role, conn, upstream, profiler))
    finally:
        if profiler is not None:
            profiler.dump_stats(profile)
        conn.close()


async def _until_told(conn: Connection) -> None:
    """Wait for a message, or for EOF when the parent dies."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())


async def _serve_async(role: str, conn: Connection, upstream: str,
                       profiler: cProfile.Profile | None) -> None:
    if role == DIRECT:
        async with OllamaEmulator(name=EMULATOR_NAME, tokens_per_s=TOKENS_PER_S, latency_s=0.0,
                                  parallel=PARALLEL, reply_words=REPLY_WORDS, host=HOST) as node:
            conn.send(node.url)
            await _until_told(conn)
        return
    if role == AIOHTTP_PROXY:
        runner = web.AppRunner(aiohttp_proxy(upstream), access_log=None)
        await runner.setup()
        site: web.BaseSite = web.TCPSite(runner, HOST, 0)
    else:
        # No probe mid-measurement, and the one snapshot never goes stale: on a slow host a run
        # outlasts health.stale_after_s (30 s) and the node would drop out (404s).
        settings = Settings.load(environ={
            "OLLAMA_NODES": upstream, "SOLLOL_OLLAMA_PARALLEL": str(PARALLEL),
            "SOLLOL_HEALTH_INTERVAL": "3600", "SOLLOL_HOST": HOST},
            flags={"health.stale_after_s": 7200.0})
        # As `sollol serve` runs it (sollol_core/gateway/serve.py), on a free port.
        limits = limits_of(settings.gateway)
        runner = app_runner(create_app(Router.create(settings)), limits)
        await runner.setup()
        site = GuardedSite(runner, HOST, 0, limits=limits)
    try:
        await site.start()
        conn.send(f"http://{HOST}:{runner.addresses[0][1]}")
        if profiler is not None:
            profiler.enable()
        try:
            await _until_told(conn)
        finally:
            if profiler is not None:
                profiler.disable()
    finally:
        await runner.cleanup()


@dataclass
class Server:
    role: str
    pid: int
    url: str
    stop: Callable[[], None]


def start_child(role: str, upstream: str = "", profile: str = "") -> Server:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(role, theirs, upstream, profile),
                              name=f"bench-{role}", daemon=True)
    process.start()
    theirs.close()
    stop = functools.partial(_stop_child, process, ours)
    if not ours.poll(START_TIMEOUT_S):
        stop()
        raise RuntimeError(f"the {role} did not start within {START_TIMEOUT_S:.0f} s")
    try:
        url = ours.recv()
    except EOFError:
        stop()
        raise RuntimeError(f"the {role} died while starting (exit code "
                           f"{process.exitcode})") from None
    assert process.pid is not None
    return Server(role, process.pid, url, stop)


def _stop_child(process: BaseProcess, conn: Connection) -> None:
    """Ask it to stop, then insist; returns once the process is gone."""
    try:
        conn.send("stop")
    except OSError:
        pass  # already gone
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    conn.close()


def start_nginx_target(binary: str, upstream: str) -> Server:
    process, url, prefix = start_nginx(binary, upstream, HOST)
    return Server(NGINX, process.pid, url, functools.partial(stop_nginx, process, prefix))


def pin(servers: Sequence[Server]) -> dict[str, list[int]]:
    """Each proxy on the last CPU, the emulator and the load generator on the others, so that
    a proxy's requests/s is what one core gives it. Nothing is pinned on a one-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return {}
    proxy_cpu, others = cpus[-1:], cpus[:-1]
    placed: dict[str, list[int]] = {"load generator": others}
    os.sched_setaffinity(0, others)
    for server in servers:
        cpu = others if server.role == DIRECT else proxy_cpu
        os.sched_setaffinity(server.pid, cpu)
        placed[server.role] = cpu
    return placed


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used; NaN where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return float("nan")


# -- the load generator (this process) -----------------------------------------------------------
@dataclass
class Run:
    """The samples of one (target, mode, concurrency) measurement, possibly over several rounds."""

    requests: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latency_s: list[float] = field(default_factory=list)
    first_chunk_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


#: The request shapes: Ollama's generate and chat, and OpenAI's chat completions.
GENERATE, CHAT, OPENAI = "/api/generate", "/api/chat", "/v1/chat/completions"
#: (mode, what SOLLOL and the proxies are sent, what the node itself is sent). In the OpenAI
#: modes the direct target is the same chat in Ollama's own API (the emulator has no /v1), and
#: the reference proxies are left out: they cannot turn one API into the other.
MODES = (("non-stream", GENERATE, GENERATE, False), ("stream", GENERATE, GENERATE, True),
         ("openai non-stream", OPENAI, CHAT, False), ("openai stream", OPENAI, CHAT, True))


def request_body(path: str, stream: bool) -> bytes:
    fields: dict[str, Any] = {"model": MODEL, "stream": stream}
    if path == GENERATE:
        fields["prompt"] = "hi"
    else:
        fields["messages"] = [{"role": "user", "content": "hi"}]
    return json.dumps(fields).encode()


def _check(status: int, headers: Any, lines: Sequence[bytes], path: str, stream: bool,
           gateway: bool) -> str | None:
    """Why this response is wrong, or None."""
    if status != 200:
        return f"status {status}: {b''.join(lines)[:200]!r}"
    if gateway and "X-Sollol-Backend" not in headers:
        return "no X-Sollol-Backend header"
    if path == OPENAI:
        return _check_openai(lines, stream)
    try:
        chunks = [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        return f"not JSON: {b''.join(lines)[:200]!r}"
    if not chunks or any(not isinstance(c, dict) or "error" in c for c in chunks):
        return f"bad chunks: {chunks!r:.200}"
    if stream and len(chunks) != REPLY_WORDS + 1:
        return f"{len(chunks)} chunks, expected {REPLY_WORDS + 1}"
    if not stream and len(chunks) != 1:
        return f"{len(chunks)} JSON values, expected 1"
    text = "".join(str(c.get("response", "")) if path == GENERATE
                   else str(c.get("message", {}).get("content", "")) for c in chunks)
    if chunks[-1].get("done") is not True or text != EXPECTED_TEXT:
        return f"wrong answer: {text!r}, done={chunks[-1].get('done')!r}"
    return None


def _check_openai(lines: Sequence[bytes], stream: bool) -> str | None:
    raw = b"".join(lines)
    try:
        if not stream:
            text = json.loads(raw)["choices"][0]["message"]["content"]
        else:
            events = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
            if not events or events[-1] != b"[DONE]":
                return f"no [DONE] at the end: {raw[-200:]!r}"
            text = "".join(choice["delta"].get("content") or ""
                           for event in events[:-1]
                           for choice in json.loads(event).get("choices", ()))
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not OpenAI's shape: {raw[:200]!r}"
    return None if text == EXPECTED_TEXT else f"wrong answer: {text!r}"


async def load(url: str, concurrency: int, total: int, path: str, stream: bool, gateway: bool,
               run: Run, warmup: int, server_cpu: Callable[[], float]) -> None:
    """``warmup`` then ``total`` requests, ``concurrency`` at a time, recorded in ``run``;
    ``server_cpu`` reads the CPU seconds the server process has used."""
    body = request_body(path, stream)
    headers = {"Content-Type": "application/json"}
    endpoint = f"{url}{path}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    clock = time.perf_counter
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(record: bool) -> None:
            start = clock()
            first = end = 0.0
            lines: list[bytes] = []
            try:
                async with session.post(endpoint, data=body, headers=headers) as response:
                    if stream and response.status == 200:
                        async for line in response.content:
                            if not first and line.strip():
                                first = clock()
                            lines.append(line)
                    else:
                        lines.append(await response.read())
                    end = clock()
                    problem = _check(response.status, response.headers, lines, path, stream,
                                     gateway)
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                run.errors.append(problem)
            elif record:
                run.latency_s.append(end - start)
                if stream:
                    run.first_chunk_s.append(first - start)

        async def worker(left: list[int], record: bool) -> None:
            while left[0] > 0:
                left[0] -= 1
                await one(record)

        warm = [warmup]
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
        left = [total]
        cpu_before, own_before = server_cpu(), time.process_time()
        started = clock()
        await asyncio.gather(*(worker(left, True) for _ in range(concurrency)))
        run.wall_s += clock() - started
        run.server_cpu_s += server_cpu() - cpu_before
        run.client_cpu_s += time.process_time() - own_before
        run.requests += total


def _ms(samples: Sequence[float], q: int) -> float:
    return round(percentile(samples, q) * 1000, 3)


def summarise(mode: str, concurrency: int, runs: dict[str, Run],
              stream: bool) -> list[dict[str, Any]]:
    """A row per target; a proxy's row says what it adds to ``direct``, measured alike."""
    direct = runs[DIRECT]
    d_rps = direct.requests / direct.wall_s
    rows = []
    for target, run in runs.items():
        rps = run.requests / run.wall_s
        row: dict[str, Any] = {
            "mode": mode, "concurrency": concurrency, "target": target,
            "requests": run.requests, "p50_ms": _ms(run.latency_s, 50),
            "p99_ms": _ms(run.latency_s, 99), "rps": round(rps, 1),
            "cpu_us_per_request": round(run.server_cpu_s / run.requests * 1e6),
            "client_cpu_us_per_request": round(run.client_cpu_s / run.requests * 1e6)}
        if stream:
            row.update(ttfc_p50_ms=_ms(run.first_chunk_s, 50),
                       ttfc_p99_ms=_ms(run.first_chunk_s, 99))
        if target != DIRECT:
            row.update(added_p50_ms=round(row["p50_ms"] - _ms(direct.latency_s, 50), 3),
                       added_p99_ms=round(row["p99_ms"] - _ms(direct.latency_s, 99), 3),
                       rps_ratio=round(rps / d_rps, 3))
            if "ttfc_p50_ms" in row:
                row["added_ttfc_p50_ms"] = round(
                    row["ttfc_p50_ms"] - _ms(direct.first_chunk_s, 50), 3)
        rows.append(row)
    return rows


async def wait_for_model(url: str) -> None:
    """Until the gateway's /api/tags lists MODEL (its first probe has answered)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/api/tags") as response:
                    tags = await response.json()
                if any(m.get("name", "").split(":")[0] == MODEL for m in tags.get("models", [])):
                    return
            except (aiohttp.ClientError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not list {MODEL} within "
                                   f"{START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)


async def measure(servers: Sequence[Server], counts: dict[int, int],
                  rounds: int) -> tuple[list[dict[str, Any]], list[str]]:
    await wait_for_model(next(s.url for s in servers if s.role == SOLLOL))
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for mode, path, direct_path, stream in MODES:
        targets = [server for server in servers
                   if path == direct_path or server.role in (DIRECT, SOLLOL)]
        for concurrency in CONCURRENCY:
            total = counts[concurrency]
            print(f"gateway: {mode}, concurrency {concurrency}, {total} requests x "
                  f"{len(targets)} targets...", file=sys.stderr, flush=True)
            runs = {server.role: Run() for server in targets}
            # Alternate the targets in rounds so that drift on the machine hits all alike.
            for _ in range(rounds):
                for server in targets:
                    await load(server.url, concurrency, total // rounds,
                               direct_path if server.role == DIRECT else path, stream,
                               server.role == SOLLOL, runs[server.role],
                               warmup=max(50, 4 * concurrency),
                               server_cpu=functools.partial(process_cpu_s, server.pid))
            for target, run in runs.items():
                errors += [f"{mode} c={concurrency} {target}: {e}" for e in run.errors]
            rows += summarise(mode, concurrency, runs, stream)
    return rows, errors


#: Issue 14's targets for the gateway as installed, per row of the ``sollol`` target.
ADDED_P50_MS = 0.3
RPS_RATIO_AT_50 = 0.5
CPU_US_PER_REQUEST = 250


def check_targets(rows: Sequence[dict[str, Any]], target: str = SOLLOL) -> dict[str, Any]:
    """The targets of docs/benchmarks.md for one target's rows (reported, never asserted)."""
    ours = [r for r in rows if r["target"] == target]
    name = {id(r): f"{r['mode']} c={r['concurrency']}" for r in ours}
    lone = {name[id(r)]: r["added_p50_ms"] for r in ours if r["concurrency"] == 1}
    lone.update({f"{name[id(r)]} first chunk": r["added_ttfc_p50_ms"]
                 for r in ours if r["concurrency"] == 1 and "added_ttfc_p50_ms" in r})
    ratios = {name[id(r)]: r["rps_ratio"] for r in ours if r["concurrency"] == 50}
    cpu = {name[id(r)]: r["cpu_us_per_request"] for r in ours}
    return {
        f"added_p50_at_most_{ADDED_P50_MS}ms_lone": {
            "met": all(v <= ADDED_P50_MS for v in lone.values()), "by_row": lone},
        f"rps_at_least_{RPS_RATIO_AT_50}x_direct_at_c50": {
            "met": all(v >= RPS_RATIO_AT_50 for v in ratios.values()), "by_row": ratios},
        f"cpu_at_most_{CPU_US_PER_REQUEST}us_per_request": {
            "met": all(v <= CPU_US_PER_REQUEST for v in cpu.values()), "by_row": cpu},
    }


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'mode':<17} {'conc':>4} {'target':<13} {'p50 ms':>7} {'p99':>7} {'added p50':>9} "
          f"{'ttfc p50':>8} {'added':>6} {'rps':>7} {'ratio':>5} {'cpu us/req':>10}")
    def cell(r: dict[str, Any], key: str, width: int) -> str:
        return f"{r[key]:>{width}.2f}" if key in r else f"{'-':>{width}}"

    for r in rows:
        print(f"{r['mode']:<17} {r['concurrency']:>4} {r['target']:<13} {r['p50_ms']:>7.2f} "
              f"{r['p99_ms']:>7.2f} {cell(r, 'added_p50_ms', 9)} {cell(r, 'ttfc_p50_ms', 8)} "
              f"{cell(r, 'added_ttfc_p50_ms', 6)} {r['rps']:>7.0f} {cell(r, 'rps_ratio', 5)} "
              f"{r['cpu_us_per_request']:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the gateway under cProfile and write its pstats here")
    parser.add_argument("--only-sollol", action="store_true",
                        help="leave the reference proxies out (with --profile, say)")
    args = parser.parse_args(argv)

    if args.quick:
        counts, rounds = {1: 500, 10: 500, 50: 500}, 1
    else:
        counts, rounds = {1: 4000, 10: 8000, 50: 8000}, 4
    servers: list[Server] = []
    nginx = None if args.only_sollol else nginx_binary()
    try:
        print("gateway: starting the emulator and the proxies...", file=sys.stderr, flush=True)
        emulator = start_child(DIRECT)
        servers.append(emulator)
        upstream = emulator.url.removeprefix("http://")
        servers.append(start_child(SOLLOL, upstream, str(args.profile or "")))
        if not args.only_sollol:
            servers.append(start_child(AIOHTTP_PROXY, upstream))
            if nginx is not None:
                servers.append(start_nginx_target(nginx, upstream))
            else:
                print("gateway: nginx is not installed; measuring without it (Debian: "
                      "apt-get install nginx-light)", file=sys.stderr)
        pinned = pin(servers)
        rows, errors = asyncio.run(measure(servers, counts, rounds))
    except KeyboardInterrupt:
        print("gateway: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in reversed(servers):
            server.stop()

    print_table(rows)
    targets = {target: check_targets(rows, target)
               for target in (SOLLOL, AIOHTTP_PROXY, NGINX) if any(
                   r["target"] == target for r in rows)}
    for name, verdict in targets[SOLLOL].items():
        print(f"target {name}: {'met' if verdict['met'] else 'NOT met'} "
              f"({', '.join(f'{k} {v}' for k, v in verdict['by_row'].items())})",
              file=sys.stderr)
    report = {
        "benchmark": "gateway", **environment(), "aiohttp": aiohttp.__version__,
        "setup": {
            "processes": "the load generator (this process), the emulator and each proxy "
                         "(multiprocessing spawn children; nginx a subprocess); all on 127.0.0.1",
            "pinned_cpus": pinned,
            "emulator": {"parallel": PARALLEL, "tokens_per_s": TOKENS_PER_S, "latency_s": 0.0,
                         "reply_words": REPLY_WORDS},
            "sollol": {"ollama_nodes": 1, "ollama_parallel": PARALLEL,
                       "health_interval_s": 3600, "plugins": "all installed (default)",
                       "event_loop": "as `sollol serve` runs it"},
            "aiohttp-proxy": "benchmarks/proxies.py: relays bytes, parses nothing",
            "nginx": nginx_version(nginx) if nginx else "not installed",
            "requests_sent": {mode: {"sollol": path, "direct": direct}
                              for mode, path, direct, _ in MODES},
            "request": {"model": MODEL, "prompt or message": "hi"},
            "client": "aiohttp, one pooled session per run, connector limit = concurrency",
            "requests": counts, "rounds": rounds, "quick": args.quick,
            "warmup_per_run": "max(50, 4 x concurrency) requests",
        },
        "targets": targets, "errors": len(errors), "results": rows,
    }
    write(args.output, report)
    if errors:
        print(f"gateway: {len(errors)} requests failed; the first ones:", file=sys.stderr)
        for line in errors[:10]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def nginx_version(binary: str) -> str:
    shown = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (shown.stderr or shown.stdout).strip() + "; one worker, keep-alive upstream"


if __name__ == "__main__":
    raise SystemExit(main())
