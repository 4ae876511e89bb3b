"""What the fleet looks like: probes of endpoints (:class:`NodeSnapshot` with its
:class:`Health`, :class:`Role`, :class:`DeviceMemory` and :class:`ModelInfo`), machine telemetry
(:class:`Telemetry`, :class:`DeviceTelemetry`, :class:`ProcessMemory`), measured
:class:`Performance`, and the :class:`FleetSnapshot` that placement looks at.

Imports :mod:`.endpoints` only.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import field, frozen

# Imported at run time, not under TYPE_CHECKING: cattrs resolves the string annotations of these
# classes in this module's namespace.
from sollol_core.types.endpoints import Endpoint, is_loopback, model_key

T = TypeVar("T")


class Health(enum.Enum):
    """What a probe learnt about an endpoint."""

    UP = "up"
    DOWN = "down"
    #: Reachable but serving someone else (an RPC worker held by a coordinator).
    BUSY = "busy"
    #: Reachable but speaking a protocol version we do not.
    INCOMPATIBLE = "incompatible"


class Role(enum.Enum):
    """What an endpoint can do with a request."""

    #: Runs a model whole and answers requests (an Ollama node, a plain llama-server).
    NODE = "node"
    #: Holds layers for a coordinator and answers no request itself (an RPC worker).
    WORKER = "worker"


@frozen
class DeviceMemory:
    """Memory of one compute device of a node, as its backend reports it."""

    name: str
    total_bytes: int
    free_bytes: int


@frozen
class ModelInfo:
    """A model a node can serve; ``loaded`` when it already sits in memory.

    The optional fields carry what Ollama's ``/api/tags`` and ``/api/ps`` say, so the gateway can
    list the fleet's models in the same shape.
    """

    name: str
    size_bytes: int = 0
    loaded: bool = False
    vram_bytes: int = 0
    digest: str = ""
    modified_at: str = ""
    expires_at: str = ""
    context_length: int = 0
    details: dict[str, Any] = field(factory=dict)
    capabilities: tuple[str, ...] = ()


@frozen
class NodeSnapshot:
    """What one probe saw of one endpoint at one moment."""

    endpoint: Endpoint
    health: Health
    taken_at: float
    role: Role = Role.NODE
    latency_ms: float | None = None
    version: str = ""
    detail: str = ""
    devices: tuple[DeviceMemory, ...] = ()
    models: tuple[ModelInfo, ...] = ()
    in_flight: int = 0
    #: How many requests the node serves at once (Ollama's OLLAMA_NUM_PARALLEL, llama.cpp slots).
    parallel: int = 1
    #: Where :attr:`parallel` comes from: ``node`` (it says so itself, e.g. llama-server's
    #: ``/props``), ``configured`` (for this node), ``learned`` (from how it answered: it
    #: queued or refused past that many), or ``setting`` (the plugin's default for every node).
    slots_source: str = "setting"

    @classmethod
    def down(cls, endpoint: Endpoint, detail: str, *,
             taken_at: float | None = None) -> NodeSnapshot:
        return cls(endpoint=endpoint, health=Health.DOWN, detail=detail,
                   taken_at=time.time() if taken_at is None else taken_at)

    def with_in_flight(self, in_flight: int) -> NodeSnapshot:
        """The same snapshot with another in-flight count (twice per request: cheaper than
        ``attrs.evolve``, which introspects the class each time)."""
        return NodeSnapshot(
            endpoint=self.endpoint, health=self.health, taken_at=self.taken_at, role=self.role,
            latency_ms=self.latency_ms, version=self.version, detail=self.detail,
            devices=self.devices, models=self.models, in_flight=in_flight,
            parallel=self.parallel, slots_source=self.slots_source)

    @functools.cached_property
    def free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)

    @functools.cached_property
    def total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices)

    @functools.cached_property
    def _model_keys(self) -> dict[str, bool]:
        """Normalised model name -> loaded; computed once per snapshot, read on every decision."""
        keys: dict[str, bool] = {}
        for m in self.models:
            keys[model_key(m.name)] = keys.get(model_key(m.name), False) or m.loaded
        return keys

    def holds(self, model: str) -> bool:
        return model_key(model) in self._model_keys

    def holds_key(self, key: str) -> bool:
        """:meth:`holds` for a name already normalised with :func:`model_key` (hot loops)."""
        return key in self._model_keys

    def has_loaded(self, model: str) -> bool:
        return self._model_keys.get(model_key(model), False)

    def has_loaded_key(self, key: str) -> bool:
        """:meth:`has_loaded` for a name already normalised with :func:`model_key`."""
        return self._model_keys.get(key, False)

    def model_state(self, key: str) -> bool | None:
        """For a normalised name: ``None`` if not held, else whether it is loaded (one lookup
        for placement's loop over every node)."""
        return self._model_keys.get(key)


@frozen
class DeviceTelemetry:
    """One accelerator (or the CPU seen as a device) on a machine."""

    index: int
    name: str
    kind: str = "gpu"
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilisation_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


@frozen
class ProcessMemory:
    """Memory one inference process holds (llama-server, rpc-server, ollama...)."""

    pid: int
    name: str
    rss_bytes: int | None = None
    gpu_bytes: int | None = None


@frozen
class Telemetry:
    """Resources of one machine: each telemetry plugin fills what it knows; the core merges."""

    host: str
    source: str
    taken_at: float
    cpu_count: int | None = None
    load_1m: float | None = None
    cpu_percent: float | None = None
    ram_total_bytes: int | None = None
    ram_free_bytes: int | None = None
    devices: tuple[DeviceTelemetry, ...] = ()
    processes: tuple[ProcessMemory, ...] = ()

    def merged_with(self, other: Telemetry) -> Telemetry:
        """Fields ``self`` lacks are taken from ``other``; devices and processes are joined."""
        if other.host != self.host:
            raise ValueError(f"cannot merge telemetry of {self.host} and {other.host}")
        scalars = ("cpu_count", "load_1m", "cpu_percent", "ram_total_bytes", "ram_free_bytes")
        values: dict[str, Any] = {
            name: getattr(self, name) if getattr(self, name) is not None else getattr(other, name)
            for name in scalars
        }
        return Telemetry(
            host=self.host,
            source=f"{self.source}+{other.source}",
            taken_at=max(self.taken_at, other.taken_at),
            devices=self.devices + other.devices,
            processes=self.processes + other.processes,
            **values,
        )


@frozen
class Performance:
    """Moving averages of what one node did with one model (from finished requests)."""

    node: str
    model: str
    latency_ms: float
    #: Generation (decode) speed: Ollama's ``eval_count / eval_duration``.
    tokens_per_s: float | None = None
    samples: int = 0
    #: Prompt evaluation (prefill) speed: ``prompt_eval_count / prompt_eval_duration``.
    prefill_tokens_per_s: float | None = None
    #: Time to load the model when it was not in memory (``load_duration`` of cold starts).
    load_ms: float | None = None
    #: Tokens generated per answer.
    output_tokens: float | None = None


@frozen
class FleetSnapshot:
    """Everything placement may look at, frozen at one moment."""

    nodes: tuple[NodeSnapshot, ...] = ()
    telemetry: tuple[Telemetry, ...] = ()
    performance: tuple[Performance, ...] = ()
    taken_at: float = field(factory=time.time)
    #: This machine's host name: its telemetry also describes nodes on loopback addresses.
    local_host: str = ""
    #: What plugins learnt that placement weighs (frozen values, by type; see :meth:`fact`).
    #: Not data: left out when the snapshot is shown as JSON.
    facts: Mapping[type, Any] = field(factory=dict)

    def fact(self, kind: type[T]) -> T | None:
        """The plugin fact of this type (e.g. the llama.cpp plugin's ``ShardingFacts``)."""
        found: T | None = self.facts.get(kind)
        return found

    @functools.cached_property
    def _telemetry_index(self) -> dict[str, Telemetry]:
        return {t.host: t for t in self.telemetry}

    def telemetry_for(self, host: str) -> Telemetry | None:
        """The merged telemetry of the machine at ``host`` (an agent's, or this machine's)."""
        found = self._telemetry_index.get(host)
        if found is None and self.local_host and is_loopback(host):
            found = self._telemetry_index.get(self.local_host)
        return found

    def free_bytes_of(self, node: NodeSnapshot) -> int | None:
        """Memory free for models on ``node``'s machine: what its probe saw on its devices, else
        its machine's telemetry (free GPU memory where it has GPUs, else free RAM); ``None`` when
        nothing measured it."""
        if node.devices:
            return node.free_bytes
        machine = self.telemetry_for(node.endpoint.host)
        if machine is None:
            return None
        gpus = [d.memory_free_bytes for d in machine.devices if d.memory_free_bytes is not None]
        return sum(gpus) if gpus else machine.ram_free_bytes

    @functools.cached_property
    def _performance_index(self) -> dict[tuple[str, str], Performance]:
        return {(p.node, model_key(p.model)): p for p in self.performance}

    def performance_of(self, node: str, model: str) -> Performance | None:
        return self._performance_index.get((node, model_key(model)))

    def performance_by_node(self, model: str) -> dict[str, Performance]:
        """What each node did with ``model`` lately (for scoring many nodes at once)."""
        key = model_key(model)
        return {p.node: p for p in self.performance if model_key(p.model) == key}

    def healthy(self, role: Role | None = None) -> tuple[NodeSnapshot, ...]:
        return tuple(n for n in self.nodes
                     if n.health is Health.UP and (role is None or n.role is role))

    def node(self, key: str) -> NodeSnapshot | None:
        return next((n for n in self.nodes if n.endpoint.key == key), None)
