"""The original SOLLOL's Python API, async: ``OllamaPool``, ``HybridRouter``, ``Priority``.

Both classes are thin fronts over one :class:`~sollol_core.router.Router`; the synchronous mirror
is :mod:`sollol_core.sync`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sollol_core.config import Settings
from sollol_core.convert import unstructure
from sollol_core.plugins import Plugins, plugin_attribute
from sollol_core.router import Router
from sollol_core.types import Health, InferenceRequest, Role, model_key, split_host_port

log = logging.getLogger(__name__)

Address = str | Mapping[str, Any]


class Priority:
    """Request priority, 1 (can wait) to 10 (mission-critical). Higher is served first."""

    CRITICAL = 10
    URGENT = 9
    HIGH = 7
    NORMAL = 5
    LOW = 3
    BATCH = 1


def _address(item: Address) -> str:
    """``"host:port"`` or ``{"host": ..., "port": ...}`` -> ``"host:port"``."""
    if isinstance(item, str):
        return item
    host, port = item["host"], item.get("port")
    return f"{host}:{port}" if port is not None else str(host)


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
    return float(timeout)


def _check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 10:
        raise ValueError(f"priority must be an integer from 1 to 10, got {priority!r}")
    return priority


class OllamaPool:
    """A pool of Ollama-API nodes behind one router.

    ``nodes`` are addresses (``"host:port"`` or ``{"host": ..., "port": ...}``) added to the
    discovered ones. Use ``await OllamaPool.auto_configure()`` to discover and start in one step,
    or ``async with OllamaPool(...) as pool``.
    """

    def __init__(self, nodes: Sequence[Address] | None = None, *, settings: Settings | None = None,
                 plugins: Plugins | None = None) -> None:
        settings = settings or Settings.load()
        if nodes:
            ollama = plugin_attribute("sollol_ollama.settings", "OllamaSettings", "sollol-ollama")
            own: Any = settings.section(ollama)
            settings = settings.with_sections(attrs.evolve(
                own, nodes=own.nodes + tuple(_address(n) for n in nodes)))
        self.router = Router.create(settings, plugins)
        self._started = False

    @classmethod
    async def auto_configure(cls, **kwargs: Any) -> OllamaPool:
        """Discover nodes (configuration, environment, localhost, network if enabled) and start."""
        pool = cls(**kwargs)
        await pool.start()
        return pool

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        if not self._started:
            await self.router.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self.router.stop()
            self._started = False

    async def __aenter__(self) -> OllamaPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def chat(self, model: str, messages: Sequence[Mapping[str, Any]], *,
                   priority: int = Priority.NORMAL, timeout: float | None = None,
                   stream: bool = False, **fields: Any) -> Any:
        """Ollama ``/api/chat``. Returns the response dict with ``_routing``, or with
        ``stream=True`` an async iterator of chunks."""
        request = InferenceRequest.chat(model, list(messages), priority=_check_priority(priority),
                                        stream=stream, **fields)
        return await self._send(request, timeout)

    async def generate(self, model: str, prompt: str, *, priority: int = Priority.NORMAL,
                       timeout: float | None = None, stream: bool = False, **fields: Any) -> Any:
        """Ollama ``/api/generate``; same return shapes as :meth:`chat`."""
        request = InferenceRequest.generate(model, prompt, priority=_check_priority(priority),
                                            stream=stream, **fields)
        return await self._send(request, timeout)

    async def embed(self, model: str, input: str | list[str], *, priority: int = Priority.NORMAL,
                    timeout: float | None = None, **fields: Any) -> Any:
        """Ollama ``/api/embed``: the response dict with ``embeddings`` and ``_routing``."""
        request = InferenceRequest.embed(model, input, priority=_check_priority(priority), **fields)
        return await self._send(request, timeout)

    async def _send(self, request: InferenceRequest, timeout: float | None) -> Any:
        await self.start()
        if timeout is not None:  # the router applies it: to the whole run and the first chunk
            request = attrs.evolve(request, timeout_s=_check_timeout(timeout))
        if request.stream:
            return _relay(await self.router.open(request))
        chunks, routing = await self.router.run(request)
        response = dict(chunks[-1]) if chunks else {}
        response["_routing"] = unstructure(routing)
        return response

    def stats(self) -> dict[str, Any]:
        """Per-node figures from the latest snapshot."""
        fleet = self.router.fleet.snapshot()
        return {"nodes": [unstructure(n) for n in fleet.nodes]}


def _gguf_files(given: str | os.PathLike[str] | Mapping[str, str] | None,
                ) -> str | dict[str, str] | None:
    """``gguf_path`` checked: one file for all models, or model name -> file."""
    if given is None:
        return None
    files = ({str(k): os.fspath(v) for k, v in given.items()} if isinstance(given, Mapping)
             else {"": os.fspath(given)})
    for name, path in files.items():
        if not Path(path).expanduser().is_file():
            what = f"gguf_path for {name!r}" if name else "gguf_path"
            raise FileNotFoundError(f"{what}: no such file: {path}")
    return files if isinstance(given, Mapping) else files[""]


async def _relay(reply: Any) -> AsyncIterator[dict[str, Any]]:
    async for chunk in reply:
        yield dict(chunk)


class HybridRouter:
    """Runs a model whole on one node when it fits, or sharded over llama.cpp RPC workers.

    The arguments are those of the original SOLLOL; ``rpc_backends`` takes
    ``[{"host": ..., "port": ...}]`` or ``"host:port"`` strings. ``gguf_path`` is the GGUF file
    that sharded requests load for any model neither ``[llamacpp] models`` nor the local Ollama
    store resolves (or a ``{model: path}`` mapping). ``layer_strategy`` and
    ``coordinator_timeout``, when not given, are the settings' (``[llamacpp]``: ``memory_aware``,
    120 s). ``num_rpc_backends=N`` makes a split use N workers when N are free (with
    ``auto_setup_rpc``, the ones missing are started here). Sharding itself comes from the
    ``sollol-llamacpp`` plugin; ``enable_distributed`` is on when it is installed, unless given
    (without it every request runs whole).
    """

    def __init__(self, ollama_pool: OllamaPool | None = None, *,
                 enable_distributed: bool | None = None,
                 rpc_backends: Sequence[Address] | None = None, auto_discover_rpc: bool = False,
                 auto_setup_rpc: bool = False, num_rpc_backends: int | None = None,
                 distributed_threshold_params: float | None = None,
                 coordinator_timeout: float | None = None,
                 gguf_path: str | os.PathLike[str] | Mapping[str, str] | None = None,
                 layer_strategy: str | None = None, settings: Settings | None = None,
                 plugins: Plugins | None = None) -> None:
        if layer_strategy is not None and layer_strategy not in {"memory_aware", "even"}:
            raise ValueError(
                f"layer_strategy must be 'memory_aware' or 'even', got {layer_strategy!r}")
        if num_rpc_backends is not None and num_rpc_backends < 1:
            raise ValueError(f"num_rpc_backends must be at least 1, got {num_rpc_backends}")
        ggufs = _gguf_files(gguf_path)
        try:
            self._llamacpp: type | None = plugin_attribute(
                "sollol_llamacpp.settings", "LlamacppSettings", "sollol-llamacpp")
        except ImportError:
            if enable_distributed or rpc_backends or gguf_path is not None:
                raise
            self._llamacpp = None  # nothing asked of llama.cpp: every request runs whole
        if enable_distributed is None:  # the post's bare HybridRouter() shards what it must
            enable_distributed = self._llamacpp is not None
        if ollama_pool is None:
            ollama_pool = OllamaPool(settings=settings, plugins=plugins)
        if self._llamacpp is not None:
            current = ollama_pool.router.settings
            own: Any = current.section(self._llamacpp)
            ollama_pool.router.reconfigure(current.with_sections(attrs.evolve(
                own, coordinator_timeout_s=coordinator_timeout or own.coordinator_timeout_s,
                rpc_backends=own.rpc_backends + tuple(_address(b) for b in rpc_backends or ()),
                models={**own.models, **(ggufs if isinstance(ggufs, dict) else {})},
                layer_strategy=layer_strategy or own.layer_strategy,
                distributed_threshold_params=distributed_threshold_params
                if distributed_threshold_params is not None
                else own.distributed_threshold_params,
                install_if_missing=own.install_if_missing or (enable_distributed
                                                              and auto_setup_rpc),
                # asking for N backends means a split over N when N are free
                min_shard_workers=max(own.min_shard_workers, num_rpc_backends or 0))))
        self.pool = ollama_pool
        #: A pool that already runs (``OllamaPool.auto_configure()``) looks for the workers and
        #: GGUFs given here before its next request, not at its next probe round.
        self._rediscover = ollama_pool.started and self._llamacpp is not None
        self.enable_distributed = enable_distributed
        self.auto_discover_rpc = auto_discover_rpc
        self.auto_setup_rpc = auto_setup_rpc
        self.num_rpc_backends = num_rpc_backends or 1
        self.distributed_threshold_params = distributed_threshold_params
        effective: Any = (ollama_pool.router.settings.section(self._llamacpp)
                          if self._llamacpp is not None else None)
        self.coordinator_timeout = (effective.coordinator_timeout_s if effective is not None
                                    else coordinator_timeout)
        self.gguf_path = gguf_path
        #: The one GGUF given for every model that nothing else resolves (the seed's usage).
        self._default_gguf = ggufs if isinstance(ggufs, str) else None
        self.layer_strategy = effective.layer_strategy if effective is not None else layer_strategy
        self._requests = 0
        self._distributed = 0
        #: RPC workers auto-setup still has to find or start (before the first request).
        self._workers_to_set_up = ((num_rpc_backends or 1)
                                   if enable_distributed and auto_setup_rpc
                                   and self._llamacpp is not None else 0)

    async def start(self) -> None:
        """Start the pool, with the workers this router was given, found or set up."""
        await self._ready()

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> HybridRouter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def should_use_distributed(self, model: str) -> bool:
        """Whether the placement policies would shard ``model`` now."""
        if not self.enable_distributed:
            return False
        await self._ready()
        await self._offer_default_gguf(model)
        decision = self.pool.router.decide(InferenceRequest.chat(model, []))
        return decision.plan is not None

    async def _ready(self) -> None:
        """The pool started, and, when it already ran before this router was made, its fleet
        refreshed once with this router's settings (workers given or to start, GGUFs)."""
        await self._set_up_workers()
        await self.pool.start()
        if self._rediscover:
            self._rediscover = False
            await self.pool.router.fleet.refresh()

    async def _set_up_workers(self) -> None:
        """Auto-setup, once: the RPC workers named (``rpc_backends``, ``RPC_BACKENDS``, found
        by auto-discovery) and one on this machine's 50052 that answer count; as many as are
        missing to ``num_rpc_backends`` are started here, supervised (built first if
        llama.cpp is not installed)."""
        wanted, self._workers_to_set_up = self._workers_to_set_up, 0
        if not wanted:
            return
        router = self.pool.router
        own: Any = router.settings.section(self._llamacpp)  # type: ignore[arg-type]
        probe = plugin_attribute("sollol_llamacpp.rpc_probe", "probe_rpc", "sollol-llamacpp")
        named = list(dict.fromkeys([*own.rpc_backends, "127.0.0.1:50052"]))
        places = [split_host_port(a, default_port=50052) for a in named]
        states = await asyncio.gather(*(probe(host, port,
                                              timeout_s=router.settings.discovery.timeout_s)
                                        for host, port in places))
        found = sum(state.state == "ok" for state in states)
        missing = wanted - found
        log.info("auto-setup: %d of %d RPC workers found; starting %d here", min(found, wanted),
                 wanted, max(missing, 0))
        if missing > 0:
            router.reconfigure(router.settings.with_sections(attrs.evolve(
                own, local_workers=own.local_workers + missing)))
            self._rediscover = self.pool.started

    async def _offer_default_gguf(self, model: str) -> None:
        """With one ``gguf_path`` for all models, a model that no RPC worker can take (neither
        ``[llamacpp] models`` nor the Ollama store resolve it) gets that file, then the fleet is
        refreshed so that placement sees it. Never a model some node of the fleet has listed,
        even one that is down now: that name means another model's weights."""
        if self._default_gguf is None or not self.enable_distributed or self._llamacpp is None:
            return
        router = self.pool.router
        own: Any = router.settings.section(self._llamacpp)
        if any(model_key(m) == model_key(model) for m in own.models):
            return
        if any(n.holds(model) for n in router.fleet.snapshot().nodes if n.role is Role.WORKER):
            return
        if router.fleet.knows_model(model):
            return
        router.reconfigure(router.settings.with_sections(attrs.evolve(
            own, models={**own.models, model: self._default_gguf})))
        await router.fleet.refresh()

    async def route_request(self, model: str, messages: Sequence[Mapping[str, Any]], *,
                            priority: int = Priority.NORMAL, timeout: float | None = None,
                            max_tokens: int | None = None, **fields: Any) -> Any:
        """Chat with ``model`` wherever placement puts it; the response carries ``_routing``."""
        await self._ready()
        await self._offer_default_gguf(model)
        if max_tokens is not None:
            options = dict(fields.pop("options", {}) or {})
            options["num_predict"] = max_tokens
            fields["options"] = options
        response = await self.pool.chat(model, messages, priority=priority, timeout=timeout,
                                        **fields)
        self._requests += 1
        if response.get("_routing", {}).get("backend") == "sharded":
            self._distributed += 1
        return response

    @property
    def coordinator(self) -> dict[str, Any] | None:
        """The running coordinator (the most recently used, if several), as the backend plugin
        describes it: model, URL, workers, uptime..."""
        running = self.pool.router.plugins.status().get("coordinators") or []
        return max(running, key=lambda c: -c.get("idle_s", 0.0)) if running else None

    def get_stats(self) -> dict[str, Any]:
        """Requests routed and sharded, coordinators, active RPC workers, per-node figures."""
        router = self.pool.router
        fleet = router.fleet.snapshot()
        workers = [n for n in fleet.nodes if n.role is Role.WORKER
                   and n.health in (Health.UP, Health.BUSY)]
        plugins = router.plugins.status()
        return {
            "requests": self._requests,
            "distributed_requests": self._distributed,
            "enable_distributed": self.enable_distributed,
            "coordinators": plugins.get("coordinators") or [],
            "active_rpc_backends": [n.endpoint.address for n in workers],
            "nodes": [unstructure(n) for n in fleet.nodes],
            "performance": [unstructure(p) for p in fleet.performance],
            "plugins": plugins,
        }
