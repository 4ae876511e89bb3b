"""Benchmark: machine instructions a proxied request costs, for A/B comparisons on a noisy host.

Timings on a shared 2-core host move by 25 % and more from one run to the next; instruction
counts do not depend on the host's load. Each target runs in one process under Valgrind's
callgrind, with the Ollama emulator and the load generator on the same event loop (uvloop, as
`sollol serve` runs): 100 requests to warm up, then instrumentation on for ``--requests``
requests at 10 in flight, then off. The *direct* run (client and emulator alone) is subtracted
from each proxy's run, so what remains is the proxy's own instructions per request:

    sollol        the gateway as installed (every plugin, defaults), as in benchmarks/gateway.py
    aiohttp-proxy the least a proxy on aiohttp can do (benchmarks/proxies.py)

Needs ``valgrind`` and a C compiler with Valgrind's headers (Debian: valgrind, gcc): a
four-function helper is compiled at run time to switch the instrumentation on and off.

    python benchmarks/gateway_instructions.py [--requests N] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from proxies import aiohttp_proxy  # the benchmarks folder is on sys.path
from report import environment, write
from sollol_ollama.testing import OllamaEmulator

from sollol_core.config import Settings
from sollol_core.connections import GuardedSite
from sollol_core.gateway.app import create_app
from sollol_core.gateway.serve import event_loop_factory, limits_of
from sollol_core.listening import app_runner
from sollol_core.router import Router

DIRECT, SOLLOL, AIOHTTP_PROXY = "direct", "sollol", "aiohttp-proxy"
MODES = ("non-stream", "stream")
HOST = "127.0.0.1"
MODEL = "llama3.2"
CONCURRENCY = 10
WARMUP = 100
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "gateway_instructions.json"

_HELPER = """
#include <valgrind/callgrind.h>
void instr_on(void) { CALLGRIND_START_INSTRUMENTATION; }
void instr_off(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


def build_helper(folder: Path) -> Path:
    source, library = folder / "toggle.c", folder / "toggle.so"
    source.write_text(_HELPER)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],
                   check=True)
    return library


# -- the child: one process under callgrind -------------------------------------------------------
async def _child(target: str, mode: str, requests: int, helper: str) -> None:
    toggle = ctypes.CDLL(helper)
    async with OllamaEmulator(name="bench", tokens_per_s=0.0, latency_s=0.0, parallel=64,
                              reply_words=8, host=HOST) as node:
        runner: web.AppRunner | None = None
        url = node.url
        if target != DIRECT:
            if target == SOLLOL:
                settings = Settings.load(environ={
                    "OLLAMA_NODES": node.address, "SOLLOL_OLLAMA_PARALLEL": "64",
                    "SOLLOL_HEALTH_INTERVAL": "3600", "SOLLOL_HOST": HOST,
                    # only the probes' limits: under valgrind everything is many times slower
                    "SOLLOL_HEALTH_TIMEOUT": "120", "SOLLOL_DISCOVERY_TIMEOUT": "120"},
                    flags={"health.stale_after_s": 7200.0})
                limits = limits_of(settings.gateway)  # as `sollol serve` serves it
                runner = app_runner(create_app(Router.create(settings)), limits)
                await runner.setup()
                site: web.BaseSite = GuardedSite(runner, HOST, 0, limits=limits)
            else:
                runner = web.AppRunner(aiohttp_proxy(node.address), access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, HOST, 0)
            await site.start()
            url = f"http://{HOST}:{runner.addresses[0][1]}"
        try:
            body = json.dumps({"model": MODEL, "prompt": "hi",
                               "stream": mode == "stream"}).encode()
            connector = aiohttp.TCPConnector(limit=CONCURRENCY)
            async with aiohttp.ClientSession(connector=connector) as session:
                await _wait_for_model(session, url if target == SOLLOL else node.url)

                async def one() -> None:
                    async with session.post(f"{url}/api/generate", data=body) as response:
                        data = await response.read()
                        if response.status != 200 or b"word7" not in data:
                            raise RuntimeError(f"{response.status}: {data[:200]!r}")

                async def batch(count: int) -> None:
                    left = [count]

                    async def worker() -> None:
                        while left[0] > 0:
                            left[0] -= 1
                            await one()

                    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

                await batch(WARMUP)
                toggle.instr_on()
                await batch(requests)
                toggle.instr_off()
        finally:
            if runner is not None:
                await runner.cleanup()


async def _wait_for_model(session: aiohttp.ClientSession, url: str) -> None:
    """A gateway lists the model once its first probe answered (the emulator at once)."""
    for _ in range(1200):
        async with session.get(f"{url}/api/tags") as response:
            if response.status == 200 and MODEL in (await response.text()):
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never listed {MODEL}")


# -- the parent ------------------------------------------------------------------------------------
def count(target: str, mode: str, requests: int, helper: Path, folder: Path) -> int:
    """Instructions callgrind collected over ``requests`` requests to ``target``."""
    out = folder / f"callgrind.{target}.{mode}"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", sys.executable, __file__, "--child", target, mode,
               str(requests), str(helper)]
    print(f"gateway_instructions: {target}, {mode}, {requests} requests under callgrind...",
          file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{target} {mode} failed:\n{done.stderr[-6000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="100 requests (a smoke run)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--only-sollol", action="store_true",
                        help="leave the aiohttp proxy out (quicker A/B runs)")
    parser.add_argument("--child", nargs=4, metavar=("TARGET", "MODE", "N", "HELPER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        target, mode, requests, helper = args.child
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_child(target, mode, int(requests), helper))
        return 0
    if args.quick:
        args.requests = 100
    missing = [tool for tool in ("valgrind", "gcc") if shutil.which(tool) is None]
    if missing:
        print(f"gateway_instructions: needs {' and '.join(missing)} (Debian: apt-get install "
              "valgrind gcc)", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sollol-instructions-") as scratch:
        folder = Path(scratch)
        helper = build_helper(folder)
        for mode in MODES:
            proxies = (SOLLOL,) if args.only_sollol else (SOLLOL, AIOHTTP_PROXY)
            per_request = {target: count(target, mode, args.requests, helper, folder)
                           / args.requests for target in (DIRECT, *proxies)}
            for target in proxies:
                rows.append({"mode": mode, "target": target,
                             "instructions_per_request": round(per_request[target]),
                             "direct_per_request": round(per_request[DIRECT]),
                             "added_per_request": round(per_request[target]
                                                        - per_request[DIRECT])})
    print(f"{'mode':<11} {'target':<14} {'added instructions/request':>27}")
    for row in rows:
        print(f"{row['mode']:<11} {row['target']:<14} {row['added_per_request']:>27,}")
    write(args.output, {"benchmark": "gateway_instructions", **environment(),
                        "setup": {"requests": args.requests, "concurrency": CONCURRENCY,
                                  "warmup": WARMUP, "one process": "client, emulator, proxy",
                                  "event_loop": "uvloop where installed"},
                        "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
