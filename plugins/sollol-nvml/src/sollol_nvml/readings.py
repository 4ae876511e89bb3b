"""What NVML says about each GPU, read once NVML is initialised.

Every call here blocks (it asks the driver), so :mod:`sollol_nvml.library` runs them in a worker
thread. A reading this GPU or driver cannot give (``NVMLError``: not supported, no permission...)
is left ``None``; the other readings are still reported.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psutil
import pynvml  # type: ignore[import-untyped]

from sollol_core.types import DeviceTelemetry, ProcessMemory

#: Names of the inference processes whose GPU memory is reported.
INFERENCE_PROCESSES = frozenset({"llama-server", "rpc-server", "ggml-rpc-server", "ollama"})

T = TypeVar("T")


def optional(read: Callable[[], T]) -> T | None:
    """``read()``, or ``None`` where NVML cannot give that reading."""
    try:
        return read()
    except pynvml.NVMLError:
        return None


def read_gpus() -> tuple[list[DeviceTelemetry], list[ProcessMemory]]:
    """Every GPU NVML sees, and the GPU memory of the inference processes on them.

    Raises ``NVMLError`` only when NVML cannot even count its devices. A GPU whose handle NVML
    refuses (lost, being reset) is left out.
    """
    devices: list[DeviceTelemetry] = []
    usage: list[tuple[int, int | None]] = []
    for index in range(int(pynvml.nvmlDeviceGetCount())):
        handle = optional(functools.partial(pynvml.nvmlDeviceGetHandleByIndex, index))
        if handle is None:
            continue
        devices.append(read_device(index, handle))
        usage.extend(gpu_memory_by_pid(handle))
    return devices, inference_processes(usage)


def read_device(index: int, handle: Any) -> DeviceTelemetry:
    name = optional(lambda: pynvml.nvmlDeviceGetName(handle))
    if isinstance(name, bytes):  # nvidia-ml-py before 11.515 returned bytes
        name = name.decode(errors="replace")
    memory = optional(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    utilisation = optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
    temperature = optional(
        lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
    milliwatts = optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    return DeviceTelemetry(
        index=index,
        name=str(name) if name else f"GPU {index}",
        kind="gpu",
        memory_total_bytes=int(memory.total) if memory is not None else None,
        memory_free_bytes=int(memory.free) if memory is not None else None,
        utilisation_pct=float(utilisation.gpu) if utilisation is not None else None,
        temperature_c=float(temperature) if temperature is not None else None,
        power_w=int(milliwatts) / 1000 if milliwatts is not None else None,
    )


def gpu_memory_by_pid(handle: Any) -> list[tuple[int, int | None]]:
    """(pid, bytes) of the compute processes on one GPU; bytes is None where NVML cannot tell."""
    processes = optional(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle)) or ()
    return [(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in processes]


def inference_processes(usage: Iterable[tuple[int, int | None]]) -> list[ProcessMemory]:
    """The inference processes among ``usage``, by pid, their memory summed over GPUs.

    NVML lists every process on a GPU; psutil names them. A process psutil cannot see (gone,
    another user's without permission, outside this container's pid namespace) is left out.
    """
    totals: dict[int, int | None] = {}
    for pid, used in usage:
        known = totals.get(pid)
        totals[pid] = used if known is None else known + (used or 0)
    found = []
    for pid in sorted(totals):
        name = inference_name(pid)
        if name is not None:
            found.append(ProcessMemory(pid, name, gpu_bytes=totals[pid]))
    return found


def inference_name(pid: int) -> str | None:
    """The process's name if it is an inference process, else None (as sollol-cpu names them)."""
    try:
        proc = psutil.Process(pid)
        name = proc.name()
        if name not in INFERENCE_PROCESSES:
            argv = proc.cmdline()
            name = os.path.basename(argv[0]) if argv else ""
    except psutil.Error:
        return None
    return name if name in INFERENCE_PROCESSES else None
