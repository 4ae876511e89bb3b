"""The cpu plugin, installed as a distribution and measuring this machine with real psutil."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sollol_core.config import PluginSettings, Settings
from sollol_core.plugins import PluginInfo, Plugins
from sollol_core.types import Telemetry


def _cpu_info(plugins: Plugins) -> PluginInfo:
    (info,) = [i for i in plugins.infos if i.name == "cpu"]
    return info


async def _report() -> Telemetry:
    (report,) = [r for r in await Plugins.load().collect_telemetry(Settings())
                 if r.host == socket.gethostname()]
    assert "cpu" in report.source.split("+")
    return report


async def test_loaded_from_entry_point_and_can_be_blocked() -> None:
    info = _cpu_info(Plugins.load())
    assert (info.state, info.distribution, info.hooks) == (
        "enabled", "sollol-cpu", ("sollol_collect_telemetry",))

    blocked = Plugins.load(PluginSettings(disable=("cpu",)))
    assert _cpu_info(blocked).state == "blocked"
    reports = await blocked.collect_telemetry(Settings())
    assert not any("cpu" in r.source.split("+") for r in reports)


async def test_reports_cpu_and_ram_of_this_machine() -> None:
    report = await _report()
    ram = psutil.virtual_memory()
    assert report.cpu_count == os.cpu_count()
    assert report.ram_total_bytes == ram.total
    assert report.ram_free_bytes is not None
    assert 0 < report.ram_free_bytes <= report.ram_total_bytes


@pytest.fixture
def rpc_server(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process named ``rpc-server`` (``sleep`` under that name), killed afterwards."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    link = tmp_path / "rpc-server"
    link.symlink_to(sleep)
    proc = subprocess.Popen([str(link), "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def test_sees_a_running_inference_process(rpc_server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 5
    while True:  # until the child has exec'd and carries its new name
        seen = [p for p in (await _report()).processes if p.pid == rpc_server.pid]
        if seen or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(seen) == 1
    assert seen[0].name == "rpc-server"
    assert seen[0].rss_bytes is not None and seen[0].rss_bytes > 0



async def test_reports_the_processes_sollol_started_whatever_their_name() -> None:
    """Children of this process, recursively: here a shell and the ``sleep`` it started."""
    shell = await asyncio.create_subprocess_exec("sh", "-c", "sleep 30 & wait")
    try:
        for _ in range(100):  # until the shell has started its sleep
            if psutil.Process(shell.pid).children():
                break
            await asyncio.sleep(0.05)
        (sleeper,) = psutil.Process(shell.pid).children()
        seen = {p.pid: p for p in (await _report()).processes}
        assert seen[shell.pid].name == "sh"
        assert seen[sleeper.pid].name == "sleep"
        assert all(seen[pid].rss_bytes for pid in (shell.pid, sleeper.pid))
    finally:
        for process in psutil.Process(shell.pid).children(recursive=True):
            process.kill()
        shell.kill()
        await shell.wait()
