"""Settings from a TOML file, the environment and command-line flags.

Precedence: flags > environment > file > defaults. Everything is checked when it is loaded; a bad
value is a :class:`~sollol_core.errors.ConfigError` whose lines name the key, where the value came
from and the expected form, before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from attrs import field, frozen

from sollol_core import convert
from sollol_core.errors import ConfigError
from sollol_core.types import split_host_port

DEFAULT_PORT = 11435  # next to Ollama's 11434, so a local Ollama and SOLLOL never collide
AGENT_PORT = 11436  # `sollol agent`, one per machine


class InvalidSetting(ValueError):
    """A validator's complaint about one attribute; ``key`` lets the message name it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _port(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value < 65536:
        raise InvalidSetting(attribute.name, f"expected a port number 1-65535, got {value}")


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise InvalidSetting(attribute.name, f"expected a number above 0, got {value}")


def _not_negative(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise InvalidSetting(attribute.name, f"expected 0 or more, got {value}")


def _addresses(default_port: int) -> Any:
    def check(_: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        for item in value:
            try:
                split_host_port(item, default_port=default_port)
            except ValueError as exc:
                raise InvalidSetting(
                    attribute.name, f"expected host:port, got {item!r} ({exc})") from None

    return check


def _networks(_: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InvalidSetting(
                attribute.name, f"expected a network in CIDR form like 127.0.0.0/24, got {item!r}"
            ) from None


def _fraction(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value < 1:
        raise InvalidSetting(attribute.name, f"expected a fraction from 0 to below 1, got {value}")


def _one_of(*allowed: str) -> Any:
    def check(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise InvalidSetting(attribute.name,
                                 f"expected one of {', '.join(allowed)}, got {value!r}")

    return check


def _names(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    for item in value or ():
        if not item or any(c.isspace() for c in item):
            raise InvalidSetting(attribute.name, f"expected plugin names, got {item!r}")


@frozen
class GatewaySettings:
    """The HTTP gateway (``sollol serve``)."""

    host: str = "127.0.0.1"
    port: int = field(default=DEFAULT_PORT, validator=_port)
    #: Bearer tokens accepted by the gateway; empty means no authentication.
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = field(default=32 * 1024 * 1024, validator=_positive)
    #: Most JSON values (array items and object members, counted before parsing) in one body:
    #: parsing and checking stay short enough never to stall the event loop.
    max_json_items: int = field(default=1_000_000, validator=_positive)
    #: Browser origins allowed besides loopback and local apps (Ollama's OLLAMA_ORIGINS form,
    #: ``*`` matches anything: ``https://chat.example.com``, ``http://192.168.1.5:*``).
    allowed_origins: tuple[str, ...] = ()
    #: ``Host`` names accepted besides loopback, private addresses and local names, when
    #: listening on loopback (DNS rebinding guard, as Ollama's).
    allowed_hosts: tuple[str, ...] = ()
    #: A request's header must be complete this long after its first byte (nginx's 60 s).
    header_timeout_s: float = field(default=60.0, validator=_positive)
    #: An idle connection (before its first request or between requests) is closed after this.
    keepalive_timeout_s: float = field(default=75.0, validator=_positive)
    #: A request body that does not arrive within this is refused (408).
    body_timeout_s: float = field(default=60.0, validator=_positive)
    #: Client connections at once; 0: half of this process's open-file limit. Past it the
    #: oldest connection that is not running a request is closed for the new one.
    max_connections: int = field(default=0, validator=_not_negative)
    #: On SIGINT/SIGTERM, requests still running get this long to finish; a second signal ends
    #: them at once.
    shutdown_timeout_s: float = field(default=30.0, validator=_positive)
    #: Peers whose ``X-Forwarded-Proto`` is believed (a TLS-terminating proxy on this machine).
    trusted_proxies: tuple[str, ...] = field(default=("127.0.0.1", "::1"), validator=_networks)
    #: How long a dashboard session cookie stays valid.
    dashboard_session_s: float = field(default=12 * 3600.0, validator=_positive)


@frozen
class PluginSettings:
    """Which plugins load: ``disable`` blocks names; ``load``, when set, is an allow-list."""

    disable: tuple[str, ...] = field(default=(), validator=_names)
    load: tuple[str, ...] | None = field(default=None, validator=_names)


@frozen
class DiscoverySettings:
    """Where to look for nodes. Backend plugins read the lists that concern their kind."""

    ollama_nodes: tuple[str, ...] = field(default=(), validator=_addresses(11434))
    rpc_backends: tuple[str, ...] = field(default=(), validator=_addresses(50052))
    llamacpp_servers: tuple[str, ...] = field(default=(), validator=_addresses(8080))
    #: Requests each Ollama node serves at once: its OLLAMA_NUM_PARALLEL (Ollama's default is 1).
    ollama_parallel: int = field(default=1, validator=_positive)
    #: Networks to sweep for nodes; empty (the default) means no sweep.
    subnets: tuple[str, ...] = field(default=(), validator=_networks)
    timeout_s: float = field(default=1.0, validator=_positive)
    #: ``sollol agent`` daemons ("host:port") whose machines' telemetry placement uses.
    agents: tuple[str, ...] = field(default=(), validator=_addresses(AGENT_PORT))
    #: The Bearer token the router sends to agents and agents require (one secret per fleet).
    #: Empty: the token in ``agent_token_file``, which an agent creates when it is missing.
    agent_token: str = ""
    #: Where that token is kept when none is set; empty: ``agent-token`` in SOLLOL's user
    #: config directory.
    agent_token_file: str = ""
    #: Also use nodes nobody named (``OLLAMA_HOST``, localhost's default ports): None (the
    #: default) does so only when no node list is configured.
    implicit_nodes: bool | None = None


@frozen
class AgentSettings:
    """``sollol agent``: this machine's telemetry and RPC workers, served to a router."""

    host: str = "127.0.0.1"
    port: int = field(default=AGENT_PORT, validator=_port)
    #: The address the router reaches this machine by, given in worker endpoints; empty: the
    #: bind address, or this machine's outgoing address when binding all interfaces.
    advertise: str = ""
    #: Binding anything but loopback needs this (and a token): the agent starts processes.
    allow_remote: bool = False
    #: RPC workers this agent runs at most, all routers together; 0: one per CPU core.
    max_workers: int = field(default=0, validator=_not_negative)


@frozen
class HealthSettings:
    """The probe schedule."""

    interval_s: float = field(default=5.0, validator=_positive)
    timeout_s: float = field(default=2.0, validator=_positive)
    #: A snapshot older than this counts as unknown.
    stale_after_s: float = field(default=30.0, validator=_positive)


@frozen
class RoutingSettings:
    """Request handling."""

    max_attempts: int = field(default=3, validator=_positive)
    request_timeout_s: float = field(default=300.0, validator=_positive)
    #: Time to an attempt's first chunk (model load and prompt included); raised by the
    #: placement's start-up allowance (a coordinator's load) and by a request's own timeout.
    first_token_timeout_s: float = field(default=60.0, validator=_positive)
    #: After the first chunk, a node silent this long is taken as hung (a healthy generation
    #: of any length is never cut while it keeps sending).
    silence_timeout_s: float = field(default=60.0, validator=_positive)
    queue_size: int = field(default=256, validator=_positive)
    #: Priority levels a waiting request gains per second, so low priority never starves.
    aging_per_s: float = field(default=0.5, validator=_positive)


@frozen
class LlamacppSettings:
    """llama.cpp: binaries, models available for sharding, coordinators."""

    #: Directory holding llama-server and the RPC worker; searched before PATH and the cache.
    bin_dir: str = ""
    #: Models a coordinator can load: name -> GGUF path (besides the local Ollama store).
    models: dict[str, str] = field(factory=dict)
    #: Models always sharded over RPC workers, even when a node could hold them whole.
    shard: tuple[str, ...] = ()
    coordinator_timeout_s: float = field(default=120.0, validator=_positive)
    #: A coordinator unused this long is stopped and its workers freed.
    idle_unload_s: float = field(default=600.0, validator=_positive)
    context_size: int = field(default=4096, validator=_positive)
    parallel: int = field(default=2, validator=_positive)
    #: RPC workers to start on this machine with the router (0: use only the ones named).
    local_workers: int = 0
    #: RPC workers the router asks each agent (``discovery.agents``) to run while it runs.
    agent_workers: int = field(default=0, validator=_not_negative)
    #: Workers a split uses at the least when that many are free (a split over one is no split).
    min_shard_workers: int = field(default=2, validator=_positive)
    #: Models with at least this many parameters are sharded even if a node holds them whole.
    distributed_threshold_params: float | None = None
    #: How layers are split: in proportion to free memory, or evenly.
    layer_strategy: str = field(default="memory_aware", validator=_one_of("memory_aware", "even"))
    #: Room kept free when deciding that a model fits a node whole (0.1: it needs 110 % of its
    #: estimate free on that node); nodes whose free memory nobody measured are trusted.
    memory_margin: float = field(default=0.1, validator=_fraction)


@frozen
class Settings:
    gateway: GatewaySettings = field(factory=GatewaySettings)
    plugins: PluginSettings = field(factory=PluginSettings)
    discovery: DiscoverySettings = field(factory=DiscoverySettings)
    health: HealthSettings = field(factory=HealthSettings)
    routing: RoutingSettings = field(factory=RoutingSettings)
    llamacpp: LlamacppSettings = field(factory=LlamacppSettings)
    agent: AgentSettings = field(factory=AgentSettings)

    @classmethod
    def load(cls, *, config_path: str | os.PathLike[str] | None = None,
             environ: Mapping[str, str] | None = None,
             flags: Mapping[str, Any] | None = None) -> Settings:
        """Merge defaults, the TOML file, the environment and flags (dotted keys), then check."""
        env = os.environ if environ is None else environ
        layers: list[tuple[str, dict[str, Any]]] = []
        path = config_path or env.get("SOLLOL_CONFIG")
        if path:
            layers.append((f"config file {path}", _read_toml(Path(path))))
        for variable, key, value in _from_environment(env):
            layers.append((variable, _nest({key: value})))
        layers.append(("command line", _nest(flags or {})))
        return _structure(layers)


#: Environment variables and the setting each sets. The SOLLOL_ name wins over a legacy alias.
ENVIRONMENT: dict[str, str] = {
    "SOLLOL_HOST": "gateway.host",
    "SOLLOL_PORT": "gateway.port",
    "SOLLOL_API_KEYS": "gateway.api_keys",
    "SOLLOL_MAX_BODY_BYTES": "gateway.max_body_bytes",
    "SOLLOL_MAX_JSON_ITEMS": "gateway.max_json_items",
    "SOLLOL_ORIGINS": "gateway.allowed_origins",
    "SOLLOL_ALLOWED_HOSTS": "gateway.allowed_hosts",
    "SOLLOL_HEADER_TIMEOUT": "gateway.header_timeout_s",
    "SOLLOL_KEEPALIVE_TIMEOUT": "gateway.keepalive_timeout_s",
    "SOLLOL_BODY_TIMEOUT": "gateway.body_timeout_s",
    "SOLLOL_MAX_CONNECTIONS": "gateway.max_connections",
    "SOLLOL_SHUTDOWN_TIMEOUT": "gateway.shutdown_timeout_s",
    "SOLLOL_TRUSTED_PROXIES": "gateway.trusted_proxies",
    "SOLLOL_DASHBOARD_SESSION": "gateway.dashboard_session_s",
    "SOLLOL_DISABLE_PLUGINS": "plugins.disable",
    "SOLLOL_LOAD_PLUGINS": "plugins.load",
    "SOLLOL_OLLAMA_NODES": "discovery.ollama_nodes",
    "OLLAMA_NODES": "discovery.ollama_nodes",
    "SOLLOL_RPC_BACKENDS": "discovery.rpc_backends",
    "RPC_BACKENDS": "discovery.rpc_backends",
    "SOLLOL_LLAMACPP_SERVERS": "discovery.llamacpp_servers",
    "SOLLOL_SUBNETS": "discovery.subnets",
    "SOLLOL_DISCOVERY_TIMEOUT": "discovery.timeout_s",
    "SOLLOL_AGENTS": "discovery.agents",
    "SOLLOL_AGENT_TOKEN": "discovery.agent_token",
    "SOLLOL_AGENT_TOKEN_FILE": "discovery.agent_token_file",
    "SOLLOL_IMPLICIT_NODES": "discovery.implicit_nodes",
    "SOLLOL_AGENT_MAX_WORKERS": "agent.max_workers",
    "SOLLOL_AGENT_HOST": "agent.host",
    "SOLLOL_AGENT_PORT": "agent.port",
    "SOLLOL_AGENT_ADVERTISE": "agent.advertise",
    "SOLLOL_HEALTH_INTERVAL": "health.interval_s",
    "SOLLOL_HEALTH_TIMEOUT": "health.timeout_s",
    "SOLLOL_MAX_ATTEMPTS": "routing.max_attempts",
    "SOLLOL_REQUEST_TIMEOUT": "routing.request_timeout_s",
    "SOLLOL_FIRST_TOKEN_TIMEOUT": "routing.first_token_timeout_s",
    "SOLLOL_SILENCE_TIMEOUT": "routing.silence_timeout_s",
    "SOLLOL_QUEUE_SIZE": "routing.queue_size",
    "SOLLOL_PRIORITY_AGING": "routing.aging_per_s",
    "SOLLOL_OLLAMA_PARALLEL": "discovery.ollama_parallel",
    "SOLLOL_LLAMACPP_BIN_DIR": "llamacpp.bin_dir",
    "SOLLOL_SHARD_MODELS": "llamacpp.shard",
    "SOLLOL_COORDINATOR_TIMEOUT": "llamacpp.coordinator_timeout_s",
    "SOLLOL_IDLE_UNLOAD": "llamacpp.idle_unload_s",
    "SOLLOL_LOCAL_WORKERS": "llamacpp.local_workers",
    "SOLLOL_AGENT_WORKERS": "llamacpp.agent_workers",
    "SOLLOL_MIN_SHARD_WORKERS": "llamacpp.min_shard_workers",
    "SOLLOL_LAYER_STRATEGY": "llamacpp.layer_strategy",
    "SOLLOL_DISTRIBUTED_THRESHOLD_PARAMS": "llamacpp.distributed_threshold_params",
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"config file {path}: not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"config file {path}: is a directory, expected a TOML file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: not valid TOML: {exc}"]) from None


def _from_environment(env: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    """(variable, dotted key, parsed value) in the order to apply them."""
    found: list[tuple[str, str, Any]] = []
    problems: list[str] = []
    # Legacy aliases first so that the SOLLOL_ name, applied later, wins.
    for name in sorted(ENVIRONMENT, key=lambda n: n.startswith("SOLLOL_")):
        if name not in env:
            continue
        key = ENVIRONMENT[name]
        try:
            found.append((name, key, _parse_text(env[name], _field_type(key))))
        except ValueError as exc:
            problems.append(f"{name}: {key}: {exc}, got {env[name]!r}")
    if problems:
        raise ConfigError(problems)
    return found


def _field_type(dotted: str) -> Any:
    cls: Any = Settings
    kind: Any = None
    for part in dotted.split("."):
        kind = typing.get_type_hints(cls)[part]
        cls = kind
    return kind


def _parse_text(text: str, kind: Any) -> Any:
    """An environment string to the type a setting expects."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) and type(None) in args:  # "X | None"
        kind = next(a for a in args if a is not type(None))
        args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError("expected true or false")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    return text


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is not None:
            _set(tree, dotted, value)
    return tree


def _structure(layers: list[tuple[str, dict[str, Any]]]) -> Settings:
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def merge(into: dict[str, Any], data: Mapping[str, Any], source: str, prefix: str) -> None:
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            origin.setdefault(dotted, source)
            if isinstance(value, Mapping) and isinstance(into.get(key, {}), dict):
                merge(into.setdefault(key, {}), value, source, f"{dotted}.")
            else:
                into[key] = value
                origin[dotted] = source

    for source, data in layers:
        merge(merged, data, source, "")
    try:
        return convert.structure(merged, Settings)
    except Exception as exc:
        lines = []
        for key, message in convert.error_lines(exc):
            bare = key.split("[", 1)[0]
            where = origin.get(bare) or next(
                (s for k, s in origin.items() if k.startswith(f"{bare}.")), "settings")
            lines.append(f"{where}: {key}: {message}")
        raise ConfigError(lines or [str(exc)]) from None
