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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from report import environment, percentile, write  # the benchmarks folder is on sys.path
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


# -- the servers (child processes) ---------------------------------------------------------------
def _serve(role: str, conn: Connection, upstream: str, profile: str) -> None:
    """A child's entry point: run ``role`` until the parent says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    profiler = cProfile.Profile() if profile else None
    try:
        # The gateway runs on the event loop `sollol serve` uses; the emulator on plain asyncio.
        factory = event_loop_factory() if role == "gateway" else None
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
    if role == "emulator":
        async with OllamaEmulator(name=EMULATOR_NAME, tokens_per_s=TOKENS_PER_S, latency_s=0.0,
                                  parallel=PARALLEL, reply_words=REPLY_WORDS, host=HOST) as node:
            conn.send(node.url)
            await _until_told(conn)
        return
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
    try:
        await GuardedSite(runner, HOST, 0, limits=limits).start()
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
    process: BaseProcess
    conn: Connection
    url: str = ""


def start_server(role: str, upstream: str = "", profile: str = "") -> Server:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(role, theirs, upstream, profile),
                              name=f"bench-{role}", daemon=True)
    server = Server(role, process, ours)
    process.start()
    theirs.close()
    if not ours.poll(START_TIMEOUT_S):
        stop_server(server)
        raise RuntimeError(f"the {role} did not start within {START_TIMEOUT_S:.0f} s")
    try:
        server.url = ours.recv()
    except EOFError:
        stop_server(server)
        raise RuntimeError(f"the {role} died while starting (exit code "
                           f"{process.exitcode})") from None
    return server


def stop_server(server: Server) -> None:
    """Ask it to stop, then insist; returns once the process is gone."""
    try:
        server.conn.send("stop")
    except OSError:
        pass  # already gone
    server.process.join(10)
    if server.process.is_alive():
        server.process.terminate()
        server.process.join(5)
    if server.process.is_alive():
        server.process.kill()
        server.process.join()
    server.conn.close()


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


def _check(status: int, headers: Any, lines: Sequence[bytes], stream: bool,
           gateway: bool) -> str | None:
    """Why this response is wrong, or None."""
    if status != 200:
        return f"status {status}: {b''.join(lines)[:200]!r}"
    if gateway and "X-Sollol-Backend" not in headers:
        return "no X-Sollol-Backend header"
    try:
        chunks = [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        return f"not JSON: {b''.join(lines)[:200]!r}"
    if not chunks or any(not isinstance(c, dict) or "error" in c for c in chunks):
        return f"bad chunks: {chunks!r:.200}"
    if stream:
        if len(chunks) != REPLY_WORDS + 1:
            return f"{len(chunks)} chunks, expected {REPLY_WORDS + 1}"
        text = "".join(str(c.get("response", "")) for c in chunks)
    else:
        if len(chunks) != 1:
            return f"{len(chunks)} JSON values, expected 1"
        text = str(chunks[0].get("response"))
    if chunks[-1].get("done") is not True or text != EXPECTED_TEXT:
        return f"wrong answer: {text!r}, done={chunks[-1].get('done')!r}"
    return None


async def load(url: str, concurrency: int, total: int, stream: bool, gateway: bool,
               run: Run, warmup: int, server_cpu: Callable[[], float]) -> None:
    """``warmup`` then ``total`` requests, ``concurrency`` at a time, recorded in ``run``;
    ``server_cpu`` reads the CPU seconds the server process has used."""
    body = json.dumps({"model": MODEL, "prompt": "hi", "stream": stream}).encode()
    headers = {"Content-Type": "application/json"}
    endpoint = f"{url}/api/generate"
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
                            if not first:
                                first = clock()
                            lines.append(line)
                    else:
                        lines.append(await response.read())
                    end = clock()
                    problem = _check(response.status, response.headers, lines, stream, gateway)
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


def summarise(mode: str, concurrency: int, direct: Run, gateway: Run) -> dict[str, Any]:
    d_rps = direct.requests / direct.wall_s
    g_rps = gateway.requests / gateway.wall_s
    row: dict[str, Any] = {
        "mode": mode, "concurrency": concurrency, "requests": direct.requests,
        "direct_p50_ms": _ms(direct.latency_s, 50), "direct_p99_ms": _ms(direct.latency_s, 99),
        "gateway_p50_ms": _ms(gateway.latency_s, 50),
        "gateway_p99_ms": _ms(gateway.latency_s, 99),
    }
    row["added_p50_ms"] = round(row["gateway_p50_ms"] - row["direct_p50_ms"], 3)
    row["added_p99_ms"] = round(row["gateway_p99_ms"] - row["direct_p99_ms"], 3)
    row.update(direct_rps=round(d_rps, 1), gateway_rps=round(g_rps, 1),
               rps_ratio=round(g_rps / d_rps, 3),
               emulator_cpu_us_per_request=round(direct.server_cpu_s / direct.requests * 1e6),
               gateway_cpu_us_per_request=round(gateway.server_cpu_s / gateway.requests * 1e6),
               client_cpu_us_per_request_direct=round(direct.client_cpu_s / direct.requests * 1e6),
               client_cpu_us_per_request_gateway=round(
                   gateway.client_cpu_s / gateway.requests * 1e6))
    if mode == "stream":
        row.update(direct_ttfc_p50_ms=_ms(direct.first_chunk_s, 50),
                   gateway_ttfc_p50_ms=_ms(gateway.first_chunk_s, 50),
                   direct_ttfc_p99_ms=_ms(direct.first_chunk_s, 99),
                   gateway_ttfc_p99_ms=_ms(gateway.first_chunk_s, 99))
    return row


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


async def measure(direct: Server, gateway: Server, counts: dict[int, int],
                  rounds: int) -> tuple[list[dict[str, Any]], list[str]]:
    await wait_for_model(gateway.url)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for mode in ("non-stream", "stream"):
        for concurrency in CONCURRENCY:
            total = counts[concurrency]
            print(f"gateway: {mode}, concurrency {concurrency}, {total} requests x 2 targets...",
                  file=sys.stderr, flush=True)
            runs = {"direct": Run(), "gateway": Run()}
            # Alternate the targets in rounds so that drift on the machine hits both alike.
            for _ in range(rounds):
                for target, server in (("direct", direct), ("gateway", gateway)):
                    await load(server.url, concurrency, total // rounds, mode == "stream",
                               target == "gateway", runs[target],
                               warmup=max(50, 4 * concurrency),
                               server_cpu=functools.partial(process_cpu_s, server.process.pid))
            for target, run in runs.items():
                errors += [f"{mode} c={concurrency} {target}: {e}" for e in run.errors]
            rows.append(summarise(mode, concurrency, runs["direct"], runs["gateway"]))
    return rows, errors


def check_targets(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The targets of docs/benchmarks.md, row by row (reported, never asserted)."""
    added = {f"{r['mode']} c={r['concurrency']}": r["added_p50_ms"] for r in rows}
    ratios = {f"{r['mode']} c={r['concurrency']}": r["rps_ratio"]
              for r in rows if r["concurrency"] == 50}
    return {
        "added_p50_under_1ms": {"met": all(v < 1.0 for v in added.values()),
                                "met_at": [k for k, v in added.items() if v < 1.0],
                                "by_row": added},
        "gateway_rps_at_least_half_of_direct_at_c50": {
            "met": all(v >= 0.5 for v in ratios.values()), "by_row": ratios},
    }


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'mode':<10} {'conc':>4} {'direct p50':>10} {'p99':>7} {'gateway p50':>11} "
          f"{'p99':>7} {'added p50':>9} {'p99':>7} {'direct rps':>10} {'gw rps':>8} "
          f"{'ratio':>5} {'ttfc d/g p50':>13} {'cpu us/req e/g':>14}")
    for r in rows:
        ttfc = (f"{r['direct_ttfc_p50_ms']:.2f}/{r['gateway_ttfc_p50_ms']:.2f}"
                if "direct_ttfc_p50_ms" in r else "-")
        cpu = f"{r['emulator_cpu_us_per_request']}/{r['gateway_cpu_us_per_request']}"
        print(f"{r['mode']:<10} {r['concurrency']:>4} {r['direct_p50_ms']:>10.2f} "
              f"{r['direct_p99_ms']:>7.2f} {r['gateway_p50_ms']:>11.2f} "
              f"{r['gateway_p99_ms']:>7.2f} {r['added_p50_ms']:>9.2f} {r['added_p99_ms']:>7.2f} "
              f"{r['direct_rps']:>10.0f} {r['gateway_rps']:>8.0f} {r['rps_ratio']:>5.2f} "
              f"{ttfc:>13} {cpu:>14}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the gateway under cProfile and write its pstats here")
    args = parser.parse_args(argv)

    if args.quick:
        counts, rounds = {1: 500, 10: 500, 50: 500}, 1
    else:
        counts, rounds = {1: 4000, 10: 8000, 50: 8000}, 4
    servers: list[Server] = []
    try:
        print("gateway: starting the emulator and the gateway...", file=sys.stderr, flush=True)
        emulator = start_server("emulator")
        servers.append(emulator)
        upstream = emulator.url.removeprefix("http://")
        gateway = start_server("gateway", upstream, str(args.profile or ""))
        servers.append(gateway)
        rows, errors = asyncio.run(measure(emulator, gateway, counts, rounds))
    except KeyboardInterrupt:
        print("gateway: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in reversed(servers):
            stop_server(server)

    print_table(rows)
    targets = check_targets(rows)
    for name, verdict in targets.items():
        print(f"target {name}: {'met' if verdict['met'] else 'NOT met'} "
              f"({', '.join(f'{k} {v}' for k, v in verdict['by_row'].items())})",
              file=sys.stderr)
    report = {
        "benchmark": "gateway", **environment(), "aiohttp": aiohttp.__version__,
        "setup": {
            "processes": "three: load generator (this process), emulator, gateway "
                         "(multiprocessing spawn children); all on 127.0.0.1",
            "emulator": {"parallel": PARALLEL, "tokens_per_s": TOKENS_PER_S, "latency_s": 0.0,
                         "reply_words": REPLY_WORDS},
            "gateway": {"ollama_nodes": 1, "ollama_parallel": PARALLEL,
                        "health_interval_s": 3600, "plugins": "all installed (default)"},
            "request": {"method": "POST", "path": "/api/generate", "model": MODEL,
                        "prompt": "hi"},
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


if __name__ == "__main__":
    raise SystemExit(main())
