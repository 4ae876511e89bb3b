"""CPU and RAM telemetry of this machine, for placement.

GPU plugins report device memory, but CPU-only machines (RPC workers, small Ollama nodes) have
none: placement needs their RAM, load and the memory their inference processes already hold:
those found by name, and every process SOLLOL itself started (children of this process).
psutil calls block (they read ``/proc``), so they run in a thread, off the core's event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable

import psutil

from sollol_core.config import Settings
from sollol_core.hookspecs import hookimpl
from sollol_core.types import ProcessMemory, Telemetry

SOURCE = "cpu"
#: Names of the inference processes whose memory is reported.
INFERENCE_PROCESSES = frozenset({"llama-server", "rpc-server", "ggml-rpc-server", "ollama"})


@hookimpl
def sollol_collect_telemetry(settings: Settings) -> Awaitable[Telemetry]:
    """Measure this machine in a worker thread."""
    return asyncio.to_thread(_measure)


def _measure() -> Telemetry:
    memory = psutil.virtual_memory()
    return Telemetry(
        host=socket.gethostname(),
        source=SOURCE,
        taken_at=time.time(),
        cpu_count=psutil.cpu_count(logical=True),
        load_1m=psutil.getloadavg()[0],
        cpu_percent=psutil.cpu_percent(interval=None),
        ram_total_bytes=memory.total,
        ram_free_bytes=memory.available,
        processes=tuple(_inference_processes()),
    )


def _inference_processes() -> list[ProcessMemory]:
    """Inference processes found by name, then every process SOLLOL started (the children of
    this process, recursively: coordinators, RPC workers, an agent's workers), each once."""
    found: dict[int, ProcessMemory] = {}
    for proc in psutil.process_iter():
        try:
            name = proc.name()
            if name not in INFERENCE_PROCESSES:
                argv = proc.cmdline()
                name = os.path.basename(argv[0]) if argv else ""
            if name in INFERENCE_PROCESSES:
                found[proc.pid] = ProcessMemory(proc.pid, name, proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        if child.pid in found:
            continue
        try:
            found[child.pid] = ProcessMemory(child.pid, child.name(), child.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())
