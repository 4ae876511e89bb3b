"""``HybridRouter`` as the guide writes it: ``_routing["backend"]`` is ``ollama-pool`` or
``llama.cpp-distributed``, ``router.coordinator`` describes the running coordinator, and
``get_stats()`` has the guide's keys. Placement itself is SOLLOL's (:mod:`sollol_core`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from attrs import frozen

from sollol_core import api
from sollol_core.errors import NoRouteError
from sollol_core.plugins import plugin_attribute
from sollol_core.types import Role, model_key

__all__ = ["MODEL_PROFILES", "CoordinatorInfo", "HybridRouter"]

#: The guide's model profiles: billions of parameters, memory, whether the model needs sharding.
#: Extend it as the guide shows (``MODEL_PROFILES["custom-70b"] = {...}``).
MODEL_PROFILES: dict[str, dict[str, Any]] = {
    "llama3.2": {"parameter_count": 3, "estimated_memory_gb": 2, "requires_distributed": False},
    "phi": {"parameter_count": 3, "estimated_memory_gb": 1.5, "requires_distributed": False},
    "llama3.1:8b": {"parameter_count": 8, "estimated_memory_gb": 5,
                    "requires_distributed": False},
    "codellama:13b": {"parameter_count": 13, "estimated_memory_gb": 8,
                      "requires_distributed": False},
    "llama3.1:70b": {"parameter_count": 70, "estimated_memory_gb": 40,
                     "requires_distributed": True},
    "llama3.1:405b": {"parameter_count": 405, "estimated_memory_gb": 240,
                      "requires_distributed": True},
    "mixtral:8x7b": {"parameter_count": 47, "estimated_memory_gb": 26,
                     "requires_distributed": True},
}

def _profile(model: str) -> Mapping[str, Any] | None:
    key = model_key(model)
    return next((p for name, p in MODEL_PROFILES.items() if model_key(name) == key), None)


def _no_gguf(model: str) -> str:
    """Which file is missing, and the three ways to supply it."""
    return (f"{model} is on no node of the fleet, and there is no GGUF file for it here to "
            f"shard it from. Supply one of three ways: pull it with Ollama on this machine "
            f"(ollama pull {model}: SOLLOL reads Ollama's model store), name its file in the "
            f'settings ([llamacpp] models = {{"{model}" = "/path/to/model.gguf"}}), or pass '
            f"gguf_path=\"/path/to/model.gguf\" to HybridRouter")


POOL = "ollama-pool"
DISTRIBUTED = "llama.cpp-distributed"


@frozen
class CoordinatorInfo:
    """The llama.cpp coordinator a router runs: the ``llama-server --rpc`` holding a model."""

    model: str
    base_url: str
    #: Its RPC workers, as ``{"host": ..., "port": ...}`` like the ``rpc_backends`` argument.
    rpc_backends: tuple[Mapping[str, Any], ...]
    pid: int
    started_at: float
    log_path: str
    alive: bool

    def is_running(self) -> bool:
        return self.alive

    @property
    def uptime_seconds(self) -> float:
        return time.time() - self.started_at


class HybridRouter(api.HybridRouter):
    __doc__ = (api.HybridRouter.__doc__ or "") + """
    ``model_filter``: the only models this router serves (the guide's one router per big model).
    """

    def __init__(self, ollama_pool: api.OllamaPool | None = None, *,
                 model_filter: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(ollama_pool, **kwargs)
        self.model_filter: tuple[str, ...] | None = tuple(model_filter) if model_filter else None

    async def _ready(self) -> None:
        """Started, and with ``auto_discover_rpc``, the RPC servers already running here
        (50052 and up) and in the configured subnets added to the workers, once."""
        if self.auto_discover_rpc and self.enable_distributed and self._llamacpp is not None:
            self.auto_discover_rpc = False
            from sollol.rpc_discovery import find_rpc_backends

            router = self.pool.router
            found = await find_rpc_backends(router.settings.discovery.subnets,
                                            timeout=router.settings.discovery.timeout_s)
            own: Any = router.settings.section(self._llamacpp)
            given = {*own.rpc_backends}
            added = tuple(a for a in (f"{b['host']}:{b['port']}" for b in found)
                          if a not in given)
            if added:
                router.reconfigure(router.settings.with_sections(
                    attrs.evolve(own, rpc_backends=own.rpc_backends + added)))
                self._rediscover = True
        await super()._ready()

    def _filtered_out(self, model: str) -> bool:
        return bool(self.model_filter) and all(
            model_key(model) != model_key(m) for m in self.model_filter or ())

    def _check_filter(self, model: str) -> None:
        if self._filtered_out(model):
            raise ValueError(f"this router serves {', '.join(self.model_filter or ())} only "
                             f"(model_filter), not {model!r}")

    async def should_use_distributed(self, model: str) -> bool:
        """Whether ``model`` would be sharded: placement's decision where a node of the fleet
        has the model; ``True`` where only a GGUF here has it (only llama.cpp can run it);
        else its ``MODEL_PROFILES`` entry (``requires_distributed``, or over
        ``distributed_threshold_params`` billion parameters)."""
        if self._filtered_out(model) or not self.enable_distributed:
            return False
        await self._ready()
        fleet = self.pool.router.fleet
        if fleet.knows_model(model) or any(n.holds(model) for n in fleet.snapshot().nodes
                                           if n.role is Role.NODE):
            return await super().should_use_distributed(model)
        if self._known_here(model):
            return True
        profile = _profile(model)
        if profile is None:
            return False
        threshold = (self.pool.router.settings.section(self._llamacpp).distributed_threshold_params
                     if self._llamacpp is not None else self.distributed_threshold_params)
        return bool(profile.get("requires_distributed")) or bool(
            threshold and float(profile.get("parameter_count", 0)) >= threshold)

    def _known_here(self, model: str) -> bool:
        """Whether some node lists ``model`` or a GGUF for it is known (configured, in the
        Ollama store, or the ``gguf_path`` given)."""
        if self._default_gguf is not None or self.pool.router.fleet.knows_model(model):
            return True
        if any(n.holds(model) for n in self.pool.router.fleet.snapshot().nodes):
            return True
        plugin = self._llamacpp_plugin()
        return plugin is not None and plugin.gguf_for(model) is not None

    def _llamacpp_plugin(self) -> Any:
        plugin_class = plugin_attribute("sollol_llamacpp.plugin", "LlamacppPlugin",
                                        "sollol-llamacpp")
        return self.pool.router.plugins.get(plugin_class)

    async def route_request(self, model: str, messages: Sequence[Mapping[str, Any]],
                            **kwargs: Any) -> Any:
        """Chat with ``model`` wherever placement puts it. ``_routing["backend"]`` is
        ``llama.cpp-distributed`` for a sharded request (with its ``coordinator_url``), else
        ``ollama-pool``; ``node``, ``reason``, ``policy`` and timings say more."""
        self._check_filter(model)
        await self._ready()
        if self.enable_distributed and not self._known_here(model):
            raise NoRouteError(_no_gguf(model))
        response = await super().route_request(model, messages, **kwargs)
        routing = response.get("_routing")
        if isinstance(routing, dict):
            kind = routing.get("backend")
            routing["node_kind"] = kind
            routing["backend"] = DISTRIBUTED if kind == "sharded" else POOL
            if kind == "sharded":
                running = self._coordinators().get(model_key(model))
                routing["coordinator_url"] = running.base_url if running else None
        return response

    def _coordinators(self) -> dict[str, CoordinatorInfo]:
        """The coordinators this router's llama.cpp plugin runs, by model key."""
        plugin = self._llamacpp_plugin()
        if plugin is None or plugin.coordinators is None:
            return {}
        return {key: CoordinatorInfo(
            model=c.model, base_url=c.url,
            rpc_backends=tuple({"host": w.host, "port": w.port} for w in c.workers),
            pid=c.child.pid, started_at=c.started_at, log_path=str(c.child.log_path),
            alive=c.alive) for key, c in plugin.coordinators.running.items()}

    @property
    def coordinator(self) -> CoordinatorInfo | None:  # type: ignore[override]
        """The running coordinator (the most recently started, if several), or None."""
        running = sorted(self._coordinators().values(), key=lambda c: c.started_at)
        return running[-1] if running else None

    @property
    def coordinator_model(self) -> str | None:
        coordinator = self.coordinator
        return coordinator.model if coordinator else None

    def get_stats(self) -> dict[str, Any]:
        """The guide's keys (``distributed_requests``, ``coordinator_uptime_seconds``,
        ``active_rpc_backends`` as a count) and the core's detail under the others."""
        stats = super().get_stats()
        stats["rpc_backend_addresses"] = stats["active_rpc_backends"]
        stats["active_rpc_backends"] = len(stats["rpc_backend_addresses"])
        coordinator = self.coordinator
        stats["coordinator_uptime_seconds"] = (round(coordinator.uptime_seconds, 1)
                                               if coordinator else 0)
        stats["coordinator_model"] = coordinator.model if coordinator else None
        return stats
