"""The nvml plugin, installed as a distribution and called through the real plugin manager.

NVML itself is faked at pynvml's function boundary (:mod:`sollol_nvml.testing`); psutil, the
plugin manager, the thread hop and the merge of reports are real.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pynvml  # type: ignore[import-untyped]
import pytest
from sollol_nvml.testing import FakeGPU, FakeNVML, FakeProcess, GiB

from sollol_core.config import PluginSettings, Settings
from sollol_core.plugins import Plugins
from sollol_core.types import DeviceTelemetry, ProcessMemory, Telemetry

NO_DEVICES = "no NVIDIA devices"


@contextlib.asynccontextmanager
async def running(*names: str) -> AsyncIterator[Plugins]:
    """The installed plugins ``names`` (default: nvml only), their lifespans entered."""
    plugins = Plugins.load(PluginSettings(load=names or ("nvml",)))
    async with plugins.lifespan(Settings()):
        yield plugins


async def nvml_reports(plugins: Plugins) -> list[Telemetry]:
    return [r for r in await plugins.collect_telemetry(Settings())
            if "nvml" in r.source.split("+")]


async def nvml_report(plugins: Plugins) -> Telemetry:
    (report,) = await nvml_reports(plugins)
    return report


def two_gpus() -> FakeNVML:
    return FakeNVML(gpus=[
        FakeGPU("NVIDIA H100 80GB HBM3", memory_total=80 * GiB, memory_free=60 * GiB,
                utilisation_pct=87, temperature_c=64, power_mw=312_500),
        FakeGPU("NVIDIA RTX A4000", memory_total=16 * GiB, memory_free=16 * GiB - 512 * 2**20,
                utilisation_pct=0, temperature_c=31, power_mw=14_250),
    ])


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("sollol_nvml")]


def test_found_by_its_entry_point() -> None:
    (info,) = [i for i in Plugins.load().infos if i.name == "nvml"]
    assert (info.state, info.distribution, info.hooks) == (
        "enabled", "sollol-nvml", ("sollol_collect_telemetry", "sollol_lifespan"))


async def test_reports_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    two_gpus().install(monkeypatch)
    async with running() as plugins:
        report = await nvml_report(plugins)
    assert (report.host, report.source) == (socket.gethostname(), "nvml")
    assert report.devices == (
        DeviceTelemetry(index=0, name="NVIDIA H100 80GB HBM3", kind="gpu",
                        memory_total_bytes=80 * GiB, memory_free_bytes=60 * GiB,
                        utilisation_pct=87.0, temperature_c=64.0, power_w=312.5),
        DeviceTelemetry(index=1, name="NVIDIA RTX A4000", kind="gpu",
                        memory_total_bytes=16 * GiB, memory_free_bytes=16 * GiB - 512 * 2**20,
                        utilisation_pct=0.0, temperature_c=31.0, power_w=14.25),
    )
    # What `sollol status` shows: used = total - free.
    assert [d.memory_total_bytes - d.memory_free_bytes for d in report.devices
            if d.memory_total_bytes is not None and d.memory_free_bytes is not None
            ] == [20 * GiB, 512 * 2**20]


async def test_merged_with_cpu_report_of_the_same_host(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sollol_cpu")
    two_gpus().install(monkeypatch)
    async with running("nvml", "cpu") as plugins:
        (report,) = [r for r in await plugins.collect_telemetry(Settings())
                     if r.host == socket.gethostname()]
    assert sorted(report.source.split("+")) == ["cpu", "nvml"]
    assert len(report.devices) == 2
    assert report.ram_total_bytes is not None


async def test_unsupported_readings_are_none_the_rest_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = two_gpus()
    fake.gpus[1].errors.update({
        "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetTemperature": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "nvmlDeviceGetUtilizationRates": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_NOT_SUPPORTED,
    })
    fake.install(monkeypatch)
    async with running() as plugins:
        first, second = (await nvml_report(plugins)).devices
    assert (first.power_w, first.temperature_c, first.utilisation_pct) == (312.5, 64.0, 87.0)
    assert (second.power_w, second.temperature_c, second.utilisation_pct) == (None, None, None)
    assert (second.name, second.memory_total_bytes, second.memory_free_bytes) == (
        "NVIDIA RTX A4000", 16 * GiB, 16 * GiB - 512 * 2**20)


async def test_a_lost_gpu_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = two_gpus()
    fake.gpus[0].errors["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_GPU_IS_LOST
    fake.install(monkeypatch)
    async with running() as plugins:
        (device,) = (await nvml_report(plugins)).devices
    assert (device.index, device.name) == (1, "NVIDIA RTX A4000")


@pytest.mark.parametrize("error", [
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
async def test_no_driver_reports_nothing_and_says_so_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: int) -> None:
    caplog.set_level(logging.INFO, logger="sollol_nvml")
    fake = FakeNVML(errors={"nvmlInit": error}).install(monkeypatch)
    async with running() as plugins:
        for _ in range(3):
            assert await nvml_reports(plugins) == []
    reason = str(pynvml.NVMLError(error))  # "NVML Shared Library Not Found", "Driver Not Loaded"
    assert messages(caplog) == [f"{NO_DEVICES}: {reason}"]
    assert [r.levelno for r in caplog.records if r.name.startswith("sollol_nvml")] == [
        logging.INFO]
    assert (fake.init_calls, fake.shutdown_calls) == (1, 0)


async def test_no_gpu_reports_nothing_and_releases_nvml(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sollol_nvml")
    fake = FakeNVML(gpus=[]).install(monkeypatch)
    async with running() as plugins:
        assert await nvml_reports(plugins) == []
        assert await nvml_reports(plugins) == []
        assert not fake.initialised
    assert [m for m in messages(caplog) if NO_DEVICES in m] == [
        f"{NO_DEVICES}: the driver reports none"]
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


async def test_a_failing_round_reports_nothing_and_warns_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    fake = two_gpus().install(monkeypatch)
    async with running() as plugins:
        assert len((await nvml_report(plugins)).devices) == 2
        fake.errors["nvmlDeviceGetCount"] = pynvml.NVML_ERROR_UNKNOWN
        assert await nvml_reports(plugins) == []
        assert await nvml_reports(plugins) == []
        del fake.errors["nvmlDeviceGetCount"]
        assert len((await nvml_report(plugins)).devices) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["cannot read the NVIDIA devices: Unknown Error"]


async def test_nvml_initialised_on_first_collection_and_shut_down_on_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = two_gpus().install(monkeypatch)
    async with running() as plugins:
        assert fake.init_calls == 0
        await nvml_report(plugins)
        await nvml_report(plugins)
        assert (fake.init_calls, fake.initialised) == (1, True)
    assert (fake.shutdown_calls, fake.initialised) == (1, False)


def test_importing_and_loading_does_no_nvml_work() -> None:
    code = (
        "import pynvml\n"
        "def refuse(*args): raise SystemExit('NVML initialised')\n"
        "pynvml.nvmlInit = pynvml.nvmlInitWithFlags = refuse\n"
        "import sollol_nvml.plugin\n"
        "from sollol_core.config import PluginSettings\n"
        "from sollol_core.plugins import Plugins\n"
        "Plugins.load(PluginSettings(load=('nvml',)))\n"
        "assert pynvml.nvmlLib is None, 'libnvidia-ml loaded'\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "clean"), done.stderr


@pytest.fixture
def llama_server(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process named ``llama-server`` (``sleep`` under that name), killed afterwards."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    link = tmp_path / "llama-server"
    link.symlink_to(sleep)
    proc = subprocess.Popen([str(link), "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def gone_pid() -> int:
    """The pid of a process that has exited."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


async def test_gpu_memory_of_inference_processes(
        monkeypatch: pytest.MonkeyPatch, llama_server: subprocess.Popen[bytes],
        gone_pid: int) -> None:
    fake = two_gpus()
    fake.gpus[0].processes += [FakeProcess(llama_server.pid, 30 * GiB),
                               FakeProcess(os.getpid(), 1 * GiB),  # python: not inference
                               FakeProcess(gone_pid, 2 * GiB)]     # exited since
    fake.gpus[1].processes += [FakeProcess(llama_server.pid, 6 * GiB)]  # split over both
    fake.install(monkeypatch)
    async with running() as plugins:
        report = await nvml_report(plugins)
    assert report.processes == (ProcessMemory(llama_server.pid, "llama-server",
                                              gpu_bytes=36 * GiB),)


async def test_process_memory_nvml_cannot_tell_is_none(
        monkeypatch: pytest.MonkeyPatch, llama_server: subprocess.Popen[bytes]) -> None:
    fake = two_gpus()
    fake.gpus[0].processes.append(FakeProcess(llama_server.pid, None))
    fake.install(monkeypatch)
    async with running() as plugins:
        (process,) = (await nvml_report(plugins)).processes
    assert (process.name, process.gpu_bytes) == ("llama-server", None)


async def test_the_real_nvml_of_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    """No fake: a machine without GPU or driver reports nothing; one with GPUs reports each."""
    caplog.set_level(logging.INFO, logger="sollol_nvml")
    async with running() as plugins:
        reports = await nvml_reports(plugins)
        count = len(reports[0].devices) if reports else 0
    try:
        pynvml.nvmlInit()
        try:
            expected = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        expected = 0
    assert count == expected
    if expected == 0:
        assert reports == []
        assert len([m for m in messages(caplog) if m.startswith(NO_DEVICES)]) == 1
    else:
        for device in reports[0].devices:
            assert device.memory_total_bytes is not None and device.memory_total_bytes > 0
            assert device.memory_free_bytes is not None
            assert 0 <= device.memory_free_bytes <= device.memory_total_bytes


def test_report_script_agrees_with_nvml() -> None:
    """The script run on GPU machines: JSON, and exit 0 when the plugin saw what NVML sees."""
    script = Path(__file__).parents[1] / "scripts" / "nvml_report.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    output = json.loads(done.stdout)
    assert output["ok"] is True
    assert sum(len(r["devices"]) for r in output["reports"]) == output["nvml_device_count"]
