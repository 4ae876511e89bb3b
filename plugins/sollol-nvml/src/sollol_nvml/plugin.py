"""The sollol-nvml plugin's hooks: this machine's NVIDIA GPUs as telemetry.

NVML calls block (they ask the driver), so measurements run in a worker thread, off the core's
event loop. NVML is initialised by the first measurement and shut down when the router stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

from sollol_core.config import Settings
from sollol_core.hookspecs import hookimpl
from sollol_core.types import Telemetry
from sollol_nvml.library import Nvml

_nvml = Nvml()


@hookimpl
def sollol_collect_telemetry(settings: Settings) -> Awaitable[Telemetry | None]:
    """Measure this machine's GPUs in a worker thread (None when it has none)."""
    return asyncio.to_thread(_nvml.measure)


@hookimpl
def sollol_lifespan(settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    return _held()


@contextlib.asynccontextmanager
async def _held() -> AsyncIterator[None]:
    """Each router looks for GPUs afresh, and releases NVML when it stops."""
    await asyncio.to_thread(_nvml.reset)
    try:
        yield
    finally:
        await asyncio.to_thread(_nvml.reset)
