"""The blocking ``HybridRouter`` and ``OllamaPool`` of the guide
(``from sollol.sync_wrapper import HybridRouter, OllamaPool``): every call runs on SOLLOL's own
event loop thread and waits; routers still open at exit are closed then."""

from __future__ import annotations

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

    coordinator_model = sync.attribute("coordinator_model")
    model_filter = sync.attribute("model_filter")
