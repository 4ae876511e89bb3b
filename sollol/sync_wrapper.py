"""The blocking ``HybridRouter`` and ``OllamaPool`` of the guide
(``from sollol.sync_wrapper import HybridRouter, OllamaPool``): every call runs on SOLLOL's own
event loop thread and waits; routers still open at exit are closed then."""

from __future__ import annotations

from typing import Any

from sollol import hybrid_router, pool
from sollol.priority_helpers import Priority
from sollol_core import sync

__all__ = ["HybridRouter", "OllamaPool", "Priority"]


class OllamaPool(sync.OllamaPool):
    __doc__ = pool.OllamaPool.__doc__
    _async_class = pool.OllamaPool


class HybridRouter(sync.HybridRouter):
    __doc__ = hybrid_router.HybridRouter.__doc__
    _async_class = hybrid_router.HybridRouter

    @property
    def coordinator_model(self) -> str | None:
        model: str | None = self._async.coordinator_model
        return model

    @property
    def model_filter(self) -> Any:
        return self._async.model_filter
