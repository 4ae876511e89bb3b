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
from collections.abc import Mapping, Sequence
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


def port(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value < 65536:
        raise InvalidSetting(attribute.name, f"expected a port number 1-65535, got {value}")


def positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise InvalidSetting(attribute.name, f"expected a number above 0, got {value}")


def not_negative(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise InvalidSetting(attribute.name, f"expected 0 or more, got {value}")


def addresses(default_port: int) -> Any:
    def check(_: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        for item in value:
            try:
                split_host_port(item, default_port=default_port)
            except ValueError as exc:
                raise InvalidSetting(
                    attribute.name, f"expected host:port, got {item!r} ({exc})") from None

    return check


def networks(_: Any, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise InvalidSetting(
                attribute.name, f"expected a network in CIDR form like 127.0.0.0/24, got {item!r}"
            ) from None


def fraction(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value < 1:
        raise InvalidSetting(attribute.name, f"expected a fraction from 0 to below 1, got {value}")


def one_of(*allowed: str) -> Any:
    def check(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise InvalidSetting(attribute.name,
                                 f"expected one of {', '.join(allowed)}, got {value!r}")

    return check


def names(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    for item in value or ():
        if not item or any(c.isspace() for c in item):
            raise InvalidSetting(attribute.name, f"expected plugin names, got {item!r}")


@frozen
class GatewaySettings:
    """The HTTP gateway (``sollol serve``)."""

    host: str = "127.0.0.1"
    port: int = field(default=DEFAULT_PORT, validator=port)
    #: Bearer tokens accepted by the gateway; empty means no authentication.
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = field(default=32 * 1024 * 1024, validator=positive)
    #: Most JSON values (array items and object members, counted before parsing) in one body:
    #: parsing and checking stay short enough never to stall the event loop.
    max_json_items: int = field(default=1_000_000, validator=positive)
    #: Browser origins allowed besides loopback and local apps (Ollama's OLLAMA_ORIGINS form,
    #: ``*`` matches anything: ``https://chat.example.com``, ``http://192.168.1.5:*``).
    allowed_origins: tuple[str, ...] = ()
    #: ``Host`` names accepted besides loopback, private addresses and local names, when
    #: listening on loopback (DNS rebinding guard, as Ollama's).
    allowed_hosts: tuple[str, ...] = ()
    #: A request's header must be complete this long after its first byte (nginx's 60 s).
    header_timeout_s: float = field(default=60.0, validator=positive)
    #: An idle connection (before its first request or between requests) is closed after this.
    keepalive_timeout_s: float = field(default=75.0, validator=positive)
    #: A request body that does not arrive within this is refused (408).
    body_timeout_s: float = field(default=60.0, validator=positive)
    #: Client connections at once; 0: half of this process's open-file limit. Past it the
    #: oldest connection that is not running a request is closed for the new one.
    max_connections: int = field(default=0, validator=not_negative)
    #: On SIGINT/SIGTERM, requests still running get this long to finish; a second signal ends
    #: them at once.
    shutdown_timeout_s: float = field(default=30.0, validator=positive)
    #: Peers whose ``X-Forwarded-Proto`` is believed (a TLS-terminating proxy on this machine).
    trusted_proxies: tuple[str, ...] = field(default=("127.0.0.1", "::1"), validator=networks)
    #: How long a dashboard session cookie stays valid.
    dashboard_session_s: float = field(default=12 * 3600.0, validator=positive)


@frozen
class PluginSettings:
    """Which plugins load: ``disable`` blocks names; ``load``, when set, is an allow-list."""

    disable: tuple[str, ...] = field(default=(), validator=names)
    load: tuple[str, ...] | None = field(default=None, validator=names)


@frozen
class DiscoverySettings:
    """Where to look for nodes: what every backend shares. The node lists of each kind are in
    the backend plugin's own section (``[ollama] nodes``, ``[llamacpp] rpc_backends``)."""

    #: Networks to sweep for nodes; empty (the default) means no sweep.
    subnets: tuple[str, ...] = field(default=(), validator=networks)
    timeout_s: float = field(default=1.0, validator=positive)
    #: ``sollol agent`` daemons ("host:port") whose machines' telemetry placement uses.
    agents: tuple[str, ...] = field(default=(), validator=addresses(AGENT_PORT))
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
    port: int = field(default=AGENT_PORT, validator=port)
    #: The address the router reaches this machine by, given in worker endpoints; empty: the
    #: bind address, or this machine's outgoing address when binding all interfaces.
    advertise: str = ""
    #: Binding anything but loopback needs this (and a token): the agent starts processes.
    allow_remote: bool = False
    #: RPC workers this agent runs at most, all routers together; 0: one per CPU core.
    max_workers: int = field(default=0, validator=not_negative)


@frozen
class HealthSettings:
    """The probe schedule."""

    interval_s: float = field(default=5.0, validator=positive)
    timeout_s: float = field(default=2.0, validator=positive)
    #: A snapshot older than this counts as unknown.
    stale_after_s: float = field(default=30.0, validator=positive)


@frozen
class RoutingSettings:
    """Request handling."""

    max_attempts: int = field(default=3, validator=positive)
    request_timeout_s: float = field(default=300.0, validator=positive)
    #: Time to an attempt's first chunk (model load and prompt included); raised by the
    #: placement's start-up allowance (a coordinator's load) and by a request's own timeout.
    first_token_timeout_s: float = field(default=60.0, validator=positive)
    #: After the first chunk, a node silent this long is taken as hung (a healthy generation
    #: of any length is never cut while it keeps sending).
    silence_timeout_s: float = field(default=60.0, validator=positive)
    queue_size: int = field(default=256, validator=positive)
    #: Priority levels a waiting request gains per second, so low priority never starves.
    aging_per_s: float = field(default=0.5, validator=positive)
    #: Prompt prefixes remembered to send a conversation back where its prompt is cached
    #: (about 200 bytes each); 0 turns the index off.
    prompt_cache_entries: int = field(default=200_000, validator=not_negative)
    #: How long a node is assumed to keep a prompt it processed (Ollama's keep_alive: 5 min).
    prompt_cache_ttl_s: float = field(default=300.0, validator=positive)


@frozen
class Flag:
    """A command-line option that sets one field of a plugin's section."""

    #: The option, e.g. ``--ollama-node``.
    option: str
    #: The field of the section it sets.
    field: str
    help: str
    metavar: str = ""
    #: The ``sollol`` subcommands that take it.
    commands: tuple[str, ...] = ("serve", "discover")


@frozen
class SettingsSection:
    """A plugin's own part of the settings: the TOML table ``[name]``, its environment
    variables and command-line options, checked like the core's (one line per bad value)."""

    name: str
    #: An attrs class whose every field has a default; validators raise
    #: :class:`InvalidSetting` (or ``ValueError``) to reject a value.
    type: type
    #: Environment variable -> field. A ``SOLLOL_`` name wins over any other for the same field.
    environment: Mapping[str, str] = field(factory=dict)
    #: Keys of older releases (dotted, e.g. ``discovery.ollama_nodes``) -> field: still read.
    moved: Mapping[str, str] = field(factory=dict)
    flags: tuple[Flag, ...] = ()


@frozen
class Settings:
    gateway: GatewaySettings = field(factory=GatewaySettings)
    plugins: PluginSettings = field(factory=PluginSettings)
    discovery: DiscoverySettings = field(factory=DiscoverySettings)
    health: HealthSettings = field(factory=HealthSettings)
    routing: RoutingSettings = field(factory=RoutingSettings)
    agent: AgentSettings = field(factory=AgentSettings)
    #: The plugins' sections, by their type (see :meth:`section`).
    sections: Mapping[type, Any] = field(factory=dict)

    def section(self, kind: type[T]) -> T:
        """A plugin's settings; its defaults when they were not loaded (a plugin built in code)."""
        found = self.sections.get(kind)
        return found if found is not None else kind()

    def with_sections(self, *values: Any) -> Settings:
        """A copy with these plugin sections replacing those of the same types."""
        return attrs.evolve(self, sections={**self.sections, **{type(v): v for v in values}})

    @classmethod
    def load(cls, *, config_path: str | os.PathLike[str] | None = None,
             environ: Mapping[str, str] | None = None,
             flags: Mapping[str, Any] | None = None,
             sections: Sequence[SettingsSection] | None = None) -> Settings:
        """Merge defaults, the TOML file, the environment and flags (dotted keys), then check.

        ``sections``: the plugins' sections; by default those of the plugins these settings
        allow (``[plugins]``), found through their entry points."""
        env = os.environ if environ is None else environ
        path = config_path or env.get("SOLLOL_CONFIG")
        file = [(f"config file {path}", _read_toml(Path(path)))] if path else []
        flag_layer = [("command line", _nest(flags or {}))]
        ignored: frozenset[str] = frozenset()
        if sections is None:
            from sollol_core.plugins import declared_sections  # the plugins depend on this module

            core_only = _environment_layers(env, ENVIRONMENT, ())
            merged, origin = _merge([*file, *core_only, *flag_layer])
            allowed = _structure_part(merged.get("plugins", {}), PluginSettings, "plugins",
                                      origin)
            sections, ignored = declared_sections(allowed)
        table = {**ENVIRONMENT, **{name: f"{s.name}.{key}" for s in sections
                                   for name, key in s.environment.items()}}
        layers = [*file, *_environment_layers(env, table, sections), *flag_layer]
        return _structure(layers, sections, ignored)


T = typing.TypeVar("T")


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


def _environment_layers(env: Mapping[str, str], table: Mapping[str, str],
                        sections: Sequence[SettingsSection]) -> list[tuple[str, dict[str, Any]]]:
    """One layer per variable set, in the order to apply them: other names first, so that a
    ``SOLLOL_`` name, applied later, wins."""
    layers: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    for name in sorted(table, key=lambda n: n.startswith("SOLLOL_")):
        if name not in env:
            continue
        key = table[name]
        try:
            value = _parse_text(env[name], _field_type(key, sections))
        except ValueError as exc:
            problems.append(f"{name}: {key}: {exc}, got {env[name]!r}")
            continue
        layers.append((name, _nest({key: value})))
    if problems:
        raise ConfigError(problems)
    return layers


def _field_type(dotted: str, sections: Sequence[SettingsSection]) -> Any:
    head, _, rest = dotted.partition(".")
    cls: Any = next((s.type for s in sections if s.name == head), None)
    parts = rest.split(".") if cls is not None else dotted.split(".")
    cls = cls or Settings
    kind: Any = None
    for part in parts:
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


def _merge(layers: Sequence[tuple[str, Mapping[str, Any]]],
           ) -> tuple[dict[str, Any], dict[str, str]]:
    """The layers merged, later ones winning, and where each dotted key's value came from."""
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
    return merged, origin


def _structure_part(data: Any, cls: type[T], prefix: str, origin: Mapping[str, str],
                    written: Mapping[str, str] | None = None) -> T:
    """``data`` as ``cls``; its errors as lines naming the key (as the user wrote it: ``written``
    maps keys read from an older name to that name) and where it came from."""
    try:
        return convert.structure(data, cls)
    except Exception as exc:
        raise ConfigError(_error_lines(exc, prefix, origin, written or {})) from None


def _error_lines(exc: Exception, prefix: str, origin: Mapping[str, str],
                 written: Mapping[str, str]) -> list[str]:
    lines = []
    for key, message in convert.error_lines(exc):
        key = f"{prefix}.{key}" if prefix else key
        bare = key.split("[", 1)[0]
        where = origin.get(bare) or next(
            (s for k, s in origin.items() if k.startswith(f"{bare}.")), "settings")
        if bare in written:
            key = written[bare] + key[len(bare):]
        lines.append(f"{where}: {key}: {message}")
    return lines or [str(exc)]


def _structure(layers: list[tuple[str, dict[str, Any]]], sections: Sequence[SettingsSection],
               ignored: frozenset[str]) -> Settings:
    merged, origin = _merge(layers)
    written: dict[str, str] = {}
    for section in sections:  # keys of older releases, where the plugin's own are not set
        for old, name in section.moved.items():
            parent, _, leaf = old.rpartition(".")
            table = merged.get(parent) if parent else merged
            if isinstance(table, dict) and leaf in table:
                value = table.pop(leaf)
                own = merged.setdefault(section.name, {})
                if isinstance(own, dict) and name not in own:
                    own[name] = value
                    origin[f"{section.name}.{name}"] = origin.get(old, "settings")
                    written[f"{section.name}.{name}"] = old
    lines: list[str] = []
    values: dict[type, Any] = {}
    for section in sections:
        data = merged.pop(section.name, {})
        try:
            values[section.type] = _structure_part(data, section.type, section.name, origin,
                                                   written)
        except ConfigError as exc:
            lines += list(exc.lines)
    for name in ignored:  # the section of a plugin these settings do not load
        merged.pop(name, None)
    try:
        settings = _structure_part(merged, Settings, "", origin)
    except ConfigError as exc:
        lines = [*exc.lines, *lines]
    if lines:
        raise ConfigError(lines)
    return attrs.evolve(settings, sections=values)
