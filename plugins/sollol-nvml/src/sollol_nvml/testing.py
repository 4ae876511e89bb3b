"""A faithful fake of NVML for tests, shipped for anyone who tests code that reads GPUs.

:class:`FakeNVML` describes a machine's GPUs; :meth:`FakeNVML.install` puts it in place of
pynvml's functions, and only those, with a pytest ``monkeypatch`` (undone after the test). It
answers as the real library does: real pynvml structures, real ``pynvml.NVMLError`` instances
(``NVMLError_Uninitialized`` before ``nvmlInit`` or after the last ``nvmlShutdown``,
``NVMLError_InvalidArgument`` for a bad index or sensor), and the errors you give it::

    from sollol_nvml.testing import GiB, FakeGPU, FakeNVML

    FakeNVML(gpus=[FakeGPU("NVIDIA RTX 4090", memory_total=24 * GiB, memory_free=20 * GiB,
                           errors={"nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_NOT_SUPPORTED})]
             ).install(monkeypatch)
    FakeNVML(errors={"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED}).install(monkeypatch)
"""

from __future__ import annotations

from typing import Any, Protocol, Self

import pynvml  # type: ignore[import-untyped]
from attrs import define, field, frozen

GiB = 1024**3

#: The pynvml functions :meth:`FakeNVML.install` replaces.
FUNCTIONS = (
    "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetComputeRunningProcesses",
)


class Patcher(Protocol):
    """What :meth:`FakeNVML.install` needs of pytest's ``monkeypatch``."""

    def setattr(self, target: object, name: str, value: object) -> None: ...


@frozen
class FakeProcess:
    """A compute process on a GPU; ``used_gpu_memory`` None where NVML cannot tell (WDDM)."""

    pid: int
    used_gpu_memory: int | None


@define
class FakeGPU:
    """One GPU. ``errors`` maps a pynvml function name to the NVML_ERROR_* code it raises."""

    name: str
    memory_total: int
    memory_free: int
    utilisation_pct: int = 0
    temperature_c: int = 40
    power_mw: int = 100_000
    processes: list[FakeProcess] = field(factory=list)
    errors: dict[str, int] = field(factory=dict)


@frozen
class _Handle:
    """An opaque device handle, as ``nvmlDeviceGetHandleByIndex`` returns."""

    index: int


@define
class FakeNVML:
    """A machine's NVML: its GPUs, the errors of library-wide calls, and what was called.

    ``errors`` maps "nvmlInit" or "nvmlDeviceGetCount" to an NVML_ERROR_* code, e.g.
    ``NVML_ERROR_LIBRARY_NOT_FOUND`` (no driver installed) or ``NVML_ERROR_DRIVER_NOT_LOADED``.
    """

    gpus: list[FakeGPU] = field(factory=list)
    errors: dict[str, int] = field(factory=dict)
    init_calls: int = 0
    shutdown_calls: int = 0
    #: nvmlInit calls not yet matched by nvmlShutdown (NVML counts them too).
    references: int = 0

    @property
    def initialised(self) -> bool:
        return self.references > 0

    def install(self, monkeypatch: Patcher) -> Self:
        for name in FUNCTIONS:
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    # -- the library -----------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        _raise_if(self.errors, "nvmlInit")
        self.references += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._check_initialised()
        self.references -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check_initialised()
        _raise_if(self.errors, "nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_initialised()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _raise_if(self.gpus[index].errors, "nvmlDeviceGetHandleByIndex")
        return _Handle(index)

    # -- one device ------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=gpu.memory_free,
                                     used=gpu.memory_total - gpu.memory_free)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilisation_pct, memory=0)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        found = []
        for p in gpu.processes:
            info = pynvml.c_nvmlProcessInfo_t(
                pid=p.pid, usedGpuMemory=0 if p.used_gpu_memory is None else p.used_gpu_memory,
                gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            obj = pynvml.nvmlStructToFriendlyObject(info)
            if p.used_gpu_memory is None:  # as pynvml maps NVML_VALUE_NOT_AVAILABLE
                obj.usedGpuMemory = None
            found.append(obj)
        return found

    # -- helpers ---------------------------------------------------------------------------------

    def _check_initialised(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: _Handle, function: str) -> FakeGPU:
        self._check_initialised()
        gpu = self.gpus[handle.index]
        _raise_if(gpu.errors, function)
        return gpu


def _raise_if(errors: dict[str, int], function: str) -> None:
    if function in errors:
        raise pynvml.NVMLError(errors[function])
