"""The sollol-nvml plugin's hooks: this machine's NVIDIA GPUs as telemetry.

NVML calls block (they ask the driver), so measurements run in a worker thread, off the core's
event loop. NVML is initialised by the first measurement and shut down when the router stops.
The ``nvml`` entry point names :class:`NvmlPlugin`: one per router.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

from attrs import define, field

from sollol_core.config import Settings
from sollol_core.hookspecs import hookimpl
from sollol_core.types import Telemetry
from sollol_nvml.library import Nvml


@define(eq=False)  # a plugin object is itself: hashable, compared by identity
class NvmlPlugin:
    """One router's view of this machine's GPUs."""

    settings: Settings = field(factory=Settings)
    nvml: Nvml = field(factory=Nvml)

    @hookimpl
    def sollol_collect_telemetry(self) -> Awaitable[Telemetry | None]:
        """Measure this machine's GPUs in a worker thread (None when it has none)."""
        return asyncio.to_thread(self.nvml.measure)

    @hookimpl
    def sollol_lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._held()

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        """Each router looks for GPUs afresh, and releases NVML when it stops."""
        await asyncio.to_thread(self.nvml.reset)
        try:
            yield
        finally:
            await asyncio.to_thread(self.nvml.reset)
