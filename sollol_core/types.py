"""Domain value types shared by the core and every plugin.

All of them are frozen attrs classes: a snapshot, a request or a decision never changes after it is
made, so placement can be a pure function over them and observers can keep them without copying.
Dumb ``__init__``; construction from raw input lives in named constructors (``Endpoint.parse``,
``InferenceRequest.chat``...).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import time
import uuid
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen


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


class Operation(enum.Enum):
    """The kinds of request the router places (named after Ollama's endpoints)."""

    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"
    #: The legacy ``/api/embeddings``: one ``prompt``, one unnormalised ``embedding``.
    EMBEDDINGS = "embeddings"
    #: ``/api/show``: model details, answered by a node that holds the model.
    SHOW = "show"


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, ``"http://host:port/"`` or a bare host -> (host, port).

    Raises ValueError saying what is wrong (the caller names the text).
    """
    raw = text.strip()
    if "://" in raw:
        raw = raw.split("://", 1)[1]
    raw = raw.rstrip("/")
    if not raw:
        raise ValueError("not host:port")
    host, port_text = raw, ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError("not host:port")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise ValueError("not host:port")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif raw.count(":") > 1:
        try:
            ipaddress.IPv6Address(raw)  # a bare IPv6 address, no port
        except ValueError:
            raise ValueError("not host:port") from None
    if not host:
        raise ValueError("no host")
    if port_text:
        if not port_text.isdigit():
            raise ValueError("the port is not a number")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError("no port")
    if not 0 < port < 65536:
        raise ValueError("the port is outside 1-65535")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@frozen
class Endpoint:
    """One network address that serves one backend kind.

    ``kind`` is owned by the plugin that understands it ("ollama", "llamacpp-rpc", ...): the core
    never branches on it. ``source`` says how we learnt of it (config, env, network, ...).
    """

    kind: str
    host: str
    port: int
    source: str = "config"

    @classmethod
    def parse(cls, kind: str, text: str, *, default_port: int | None = None,
              source: str = "config") -> Endpoint:
        host, port = split_host_port(text, default_port)
        return cls(kind=kind, host=host, port=port, source=source)

    @functools.cached_property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @functools.cached_property
    def key(self) -> str:
        """Stable identity: kind and address (the source does not change who it is)."""
        return f"{self.kind}://{self.address}"


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
            parallel=self.parallel)

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


@functools.lru_cache(maxsize=4096)
def model_key(name: str) -> str:
    """Ollama's naming rule: ``llama3.2`` and ``llama3.2:latest`` are one model."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    return model_key(a) == model_key(b)


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
    tokens_per_s: float | None = None
    samples: int = 0


@frozen
class FleetSnapshot:
    """Everything placement may look at, frozen at one moment."""

    nodes: tuple[NodeSnapshot, ...] = ()
    telemetry: tuple[Telemetry, ...] = ()
    performance: tuple[Performance, ...] = ()
    taken_at: float = field(factory=time.time)
    #: This machine's host name: its telemetry also describes nodes on loopback addresses.
    local_host: str = ""

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


def new_request_id() -> str:
    return uuid.uuid4().hex


@frozen
class InferenceRequest:
    """One client request, parsed and validated, in Ollama's shape.

    ``body`` is the request body as the client sent it (Ollama field names); treat it as read-only.
    """

    operation: Operation
    model: str
    body: Mapping[str, Any]
    priority: int = 5
    stream: bool = False
    id: str = field(factory=new_request_id)
    received_at: float = field(factory=time.time)
    #: HTTP headers executors send upstream with this attempt (W3C ``traceparent`` from tracing
    #: plugins); the router sets them per attempt from :func:`sollol_on_attempt`.
    upstream_headers: Mapping[str, str] = field(factory=dict)
    #: This request's own time limit (the Python API's ``timeout=``): its whole run, and the
    #: longest its first chunk may take. None: the routing settings' limits.
    timeout_s: float | None = None

    @classmethod
    def chat(cls, model: str, messages: list[Mapping[str, Any]], *, priority: int = 5,
             stream: bool = False, **fields: Any) -> InferenceRequest:
        body = {"model": model, "messages": list(messages), "stream": stream, **fields}
        return cls(operation=Operation.CHAT, model=model, body=body, priority=priority,
                   stream=stream)

    @classmethod
    def generate(cls, model: str, prompt: str, *, priority: int = 5, stream: bool = False,
                 **fields: Any) -> InferenceRequest:
        body = {"model": model, "prompt": prompt, "stream": stream, **fields}
        return cls(operation=Operation.GENERATE, model=model, body=body, priority=priority,
                   stream=stream)

    @classmethod
    def embed(cls, model: str, input: str | list[str], *, priority: int = 5,
              **fields: Any) -> InferenceRequest:
        body = {"model": model, "input": input, **fields}
        return cls(operation=Operation.EMBED, model=model, body=body, priority=priority)


@frozen
class Candidate:
    """One node a policy considered, with its score (higher is better) and why."""

    endpoint: Endpoint
    score: float
    note: str = ""


@frozen
class ShardPlan:
    """A model split by layers over RPC workers, in the order the coordinator gets them."""

    workers: tuple[Endpoint, ...]
    tensor_split: tuple[float, ...]
    layers: tuple[int, ...] = ()


@frozen
class Decision:
    """Where one request runs and why. Made by a placement policy, seen by every observer."""

    request_id: str
    model: str
    policy: str
    reason: str
    target: Endpoint | None = None
    plan: ShardPlan | None = None
    candidates: tuple[Candidate, ...] = ()
    decided_at: float = field(factory=time.time)
    #: Seconds the backend may need before it can answer at all (a coordinator loading the
    #: model), allowed on top of the first-chunk limit.
    startup_s: float = 0.0

    @classmethod
    def whole(cls, request: InferenceRequest, target: Endpoint, *, policy: str, reason: str,
              candidates: tuple[Candidate, ...] = ()) -> Decision:
        return cls(request_id=request.id, model=request.model, policy=policy, reason=reason,
                   target=target, candidates=candidates)

    @classmethod
    def sharded(cls, request: InferenceRequest, plan: ShardPlan, *, policy: str, reason: str,
                candidates: tuple[Candidate, ...] = (), startup_s: float = 0.0) -> Decision:
        return cls(request_id=request.id, model=request.model, policy=policy, reason=reason,
                   plan=plan, candidates=candidates, startup_s=startup_s)

    @classmethod
    def refuse(cls, request: InferenceRequest, *, policy: str, reason: str,
               candidates: tuple[Candidate, ...] = ()) -> Decision:
        """No place for this request; ``reason`` tells the client why."""
        return cls(request_id=request.id, model=request.model, policy=policy, reason=reason,
                   candidates=candidates)

    @property
    def placed(self) -> bool:
        return self.target is not None or self.plan is not None

    @property
    def backend(self) -> str:
        """Short label of where it runs, for headers and logs."""
        if self.plan is not None:
            return "sharded:" + ",".join(w.address for w in self.plan.workers)
        return self.target.key if self.target is not None else "none"


@frozen
class RequestRecord:
    """One finished request, successful or not, as observers see it."""

    request_id: str
    model: str
    operation: Operation
    ok: bool
    duration_ms: float
    decision: Decision | None = None
    error: str | None = None
    queue_ms: float = 0.0
    attempts: int = 1
    first_chunk_ms: float | None = None
    chunks: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None


@frozen
class AttemptRecord:
    """One attempt to run a request on one backend, as observers see it when it ends.

    A request fails over to another node while nothing has been sent, so it can have several
    attempts; the last successful one ran it. Token counts come from the backend's last chunk.
    """

    request_id: str
    model: str
    operation: Operation
    attempt: int
    decision: Decision
    ok: bool
    duration_ms: float
    error: str | None = None
    #: The kind of failure (an exception class name, or ``timeout``), for ``error.type``.
    error_type: str | None = None
    first_chunk_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
