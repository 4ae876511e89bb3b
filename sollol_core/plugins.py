"""The plugin manager: the only module that calls ``pm.hook.*``.

Nothing is loaded when this module is imported. :meth:`Plugins.load` registers the built-in
plugins, then the ``sollol`` entry points that the settings allow, then checks every
implementation against :mod:`sollol_core.hookspecs`.

An entry point names a module (registered as it is: a stateless plugin) or a class or factory,
called with the router's :class:`~sollol_core.config.Settings` to build a plugin object for that
router alone (as pytest registers ``TerminalReporter(config)``). Each router loads its own
:class:`Plugins`, so two routers in one process share no plugin state.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import Any, Literal, TypeVar, cast

import click
import pluggy
from attrs import define, frozen
from prometheus_client.core import Metric

from sollol_core import hookspecs
from sollol_core.config import ENVIRONMENT, PluginSettings, Settings, SettingsSection
from sollol_core.errors import PluginError
from sollol_core.hookspecs import Chunk
from sollol_core.panels import Panel
from sollol_core.types import (
    AttemptRecord,
    Decision,
    Endpoint,
    FleetSnapshot,
    InferenceRequest,
    NodeSnapshot,
    RequestRecord,
    Telemetry,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sollol"
T = TypeVar("T")
_DEFAULT_SETTINGS = Settings()

#: Default plugins, registered like any other and blockable by these names.
BUILTIN_PLUGINS: Mapping[str, str] = MappingProxyType({
    "builtin-placement": "sollol_core.builtin.placement",
    "builtin-agents": "sollol_core.builtin.agents:AgentTelemetry",
})

PluginState = Literal["enabled", "blocked", "not allowed", "failed"]


@frozen
class PluginInfo:
    """What ``sollol plugins`` shows for one plugin."""

    name: str
    state: PluginState
    distribution: str = ""
    version: str = ""
    hooks: tuple[str, ...] = ()
    error: str = ""


@define
class Plugins:
    """A loaded set of plugins and typed, awaited calls to their hooks."""

    pm: pluggy.PluginManager
    infos: list[PluginInfo]

    @classmethod
    def empty(cls) -> Plugins:
        """A manager with the hook specifications and no plugin at all (for tests and tools)."""
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        return cls(pm=pm, infos=[])

    @classmethod
    def load(cls, settings: Settings | PluginSettings | None = None, *,
             extra: Iterable[tuple[str, object]] = ()) -> Plugins:
        """Built-ins, then allowed entry points, then ``extra`` (name, plugin) pairs; checked.

        Classes and factories among them are called with ``settings`` (the router's), so each
        call gives new plugin objects."""
        if not isinstance(settings, Settings):
            settings = Settings(plugins=settings or PluginSettings())
        self = cls.empty()
        for name in settings.plugins.disable:
            self.pm.set_blocked(name)
        for source in _sources(settings.plugins):
            if source.state != "enabled":
                self.infos.append(PluginInfo(source.name, source.state, source.dist,
                                             source.version, error=source.error))
                continue
            if self.pm.has_plugin(source.name):
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = _built(source.target, settings)
            except Exception as exc:  # a broken plugin must not take the router down
                log.warning("plugin %s failed to start: %s", source.name, exc)
                self.infos.append(PluginInfo(source.name, "failed", source.dist, source.version,
                                             error=repr(exc)))
                continue
            self._register(source.name, plugin, source.dist, source.version)
        for name, plugin in extra:
            if name not in settings.plugins.disable:
                self._register(name, _built(plugin, settings), "", "")
        self.pm.check_pending()
        return self

    def get(self, kind: type[T]) -> T | None:
        """The registered plugin object of this class (e.g. to ask the llama.cpp plugin about
        its coordinators), or None."""
        for _, plugin in self.pm.list_name_plugin():
            if isinstance(plugin, kind):
                return plugin
        return None

    def register(self, name: str, plugin: object) -> None:
        """Add one plugin object after loading (tests, embedding applications)."""
        self._register(name, plugin, "", "")
        self.pm.check_pending()

    def unregister(self, name: str) -> None:
        """Remove a plugin added with :meth:`register` (an application's own observer)."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.infos = [info for info in self.infos if info.name != name]

    def _register(self, name: str, plugin: object, dist: str, version: str) -> None:
        self.pm.register(plugin, name=name)
        impls = self.pm.get_hookcallers(plugin) or []
        for caller in impls:
            if caller.spec and caller.spec.opts.get("firstresult"):
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and inspect.iscoroutinefunction(impl.function):
                        self.pm.unregister(plugin)
                        raise PluginError(
                            f"plugin {name}: {caller.name} is a firstresult hook and must be a "
                            "plain function returning None or an awaitable, not 'async def'")
        hooks = tuple(sorted(c.name for c in impls))
        self.infos.append(PluginInfo(name, "enabled", dist, version, hooks))

    # -- the hooks, one method each ------------------------------------------------------------

    async def discover(self, settings: Settings) -> list[Endpoint]:
        results = self.pm.hook.sollol_discover(settings=settings)
        found: dict[str, Endpoint] = {}
        for batch in await _gather_logged("sollol_discover", results):
            for endpoint in batch or ():
                found.setdefault(endpoint.key, endpoint)
        return list(found.values())

    async def probe(self, endpoint: Endpoint, settings: Settings) -> NodeSnapshot | None:
        """The snapshot of the plugin that owns ``endpoint``'s kind; None if no plugin does."""
        pending = self.pm.hook.sollol_probe(endpoint=endpoint, settings=settings)
        if pending is None:
            return None
        snapshot: NodeSnapshot = await pending
        return snapshot

    async def collect_telemetry(self, settings: Settings) -> list[Telemetry]:
        """Every plugin's report, merged per host."""
        results = self.pm.hook.sollol_collect_telemetry(settings=settings)
        merged: dict[str, Telemetry] = {}
        for result in await _gather_logged("sollol_collect_telemetry", results):
            reports = (result,) if isinstance(result, Telemetry) else result or ()
            for report in reports:
                known = merged.get(report.host)
                merged[report.host] = report if known is None else known.merged_with(report)
        return list(merged.values())

    def place(self, request: InferenceRequest, fleet: FleetSnapshot,
              settings: Settings | None = None) -> Decision | None:
        decision: Decision | None = self.pm.hook.sollol_place(
            request=request, fleet=fleet, settings=settings or _DEFAULT_SETTINGS)
        return decision

    def fleet_facts(self) -> dict[type, Any]:
        """Every plugin's facts for placement, by type (on the request path: no pluggy loop)."""
        facts: dict[type, Any] = {}
        for impl in self.pm.hook.sollol_fleet_facts.get_hookimpls():
            fact = impl.function()
            if fact is not None:
                facts[type(fact)] = fact
        return facts

    def execute(self, request: InferenceRequest, decision: Decision,
                settings: Settings) -> AsyncIterator[Chunk] | None:
        stream: AsyncIterator[Chunk] | None = self.pm.hook.sollol_execute(
            request=request, decision=decision, settings=settings)
        return stream

    async def notify_decision(self, decision: Decision, request: InferenceRequest) -> None:
        await self._observe(self.pm.hook.sollol_on_decision, decision=decision, request=request)

    def attempt_headers(self, request: InferenceRequest, decision: Decision,
                        attempt: int) -> dict[str, str]:
        """Tell observers an attempt starts; the upstream headers they return, merged."""
        caller = self.pm.hook.sollol_on_attempt
        headers: dict[str, str] = {}
        for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
            try:
                extra = impl.function(**_arguments(impl, request=request, decision=decision,
                                                   attempt=attempt))
            except Exception as exc:  # observers never fail a request
                log.warning("sollol_on_attempt: plugin %s failed: %r", impl.plugin_name, exc)
                continue
            if isinstance(extra, Mapping):
                headers.update(extra)
        return headers

    async def notify_attempt_finished(self, record: AttemptRecord) -> None:
        await self._observe(self.pm.hook.sollol_on_attempt_finished, record=record)

    async def notify_finished(self, record: RequestRecord) -> None:
        await self._observe(self.pm.hook.sollol_on_request_finished, record=record)

    async def _observe(self, caller: Any, **kwargs: Any) -> None:
        """Call every observer on its own, so that one failing never hides the others."""
        impls = caller.get_hookimpls()
        if not impls:
            return
        results = []
        for impl in reversed(impls):
            try:
                result = impl.function(**_arguments(impl, **kwargs))
            except Exception as exc:
                log.warning("%s: plugin %s failed: %r", caller.name, impl.plugin_name, exc)
                continue
            if result is not None:  # most observers are plain functions: nothing to await
                results.append(result)
        if results:
            await _gather_logged(caller.name, results)

    def setup_gateway(self, app: Any) -> None:
        """Let plugins add routes, middlewares and cleanup contexts to the gateway."""
        self.pm.hook.sollol_gateway_app(app=app)

    def setup_agent(self, app: Any, settings: Settings) -> None:
        """Let plugins add routes and cleanup contexts to ``sollol agent``'s application."""
        self.pm.hook.sollol_agent_app(app=app, settings=settings)

    @contextlib.asynccontextmanager
    async def lifespan(self, settings: Settings) -> AsyncIterator[None]:
        """Enter every plugin's lifespan; exit them in reverse order, whatever happens."""
        async with contextlib.AsyncExitStack() as stack:
            for manager in self.pm.hook.sollol_lifespan(settings=settings):
                if manager is not None:
                    await stack.enter_async_context(manager)
            yield

    def status(self) -> dict[str, Any]:
        """Every plugin's status sections, merged (a failing plugin is logged and skipped)."""
        try:
            sections = self.pm.hook.sollol_status()
        except Exception as exc:
            log.warning("sollol_status: a plugin failed: %r", exc)
            return {}
        merged: dict[str, Any] = {}
        for section in sections:
            merged.update(section or {})
        return merged

    def register_commands(self, cli: click.Group) -> None:
        self.pm.hook.sollol_register_commands(cli=cli)

    def settings_sections(self) -> list[SettingsSection]:
        """Every plugin's own settings sections."""
        found: list[SettingsSection] = []
        for result in self.pm.hook.sollol_settings_sections():
            found += [result] if isinstance(result, SettingsSection) else list(result or ())
        return found

    def metrics(self) -> list[Metric]:
        """Every plugin's Prometheus metric families, read at scrape time."""
        found: list[Metric] = []
        for impl in reversed(self.pm.hook.sollol_metrics.get_hookimpls()):
            try:
                metrics = cast("Iterable[Metric] | None", impl.function()) or ()
                found += list(metrics)
            except Exception as exc:  # one plugin's failure must not hide the others'
                log.warning("sollol_metrics: plugin %s failed: %r", impl.plugin_name, exc)
        return found

    def dashboard_panels(self) -> list[Panel]:
        """Every plugin's dashboard panels, in registration order."""
        found: list[Panel] = []
        for impl in reversed(self.pm.hook.sollol_dashboard_panels.get_hookimpls()):
            try:
                result = cast("Panel | Sequence[Panel] | None", impl.function())
            except Exception as exc:
                log.warning("sollol_dashboard_panels: plugin %s failed: %r",
                            impl.plugin_name, exc)
                continue
            found += [result] if isinstance(result, Panel) else list(result or ())
        return found


@frozen
class _Source:
    """One plugin to load: a built-in or an entry point, and whether the settings allow it."""

    name: str
    state: PluginState
    dist: str
    version: str
    target: object = None
    error: str = ""


def _sources(settings: PluginSettings) -> Iterable[_Source]:
    """The built-ins, then the ``sollol`` entry points, loaded where the settings allow."""
    blocked = set(settings.disable)
    for name, where in BUILTIN_PLUGINS.items():
        if name in blocked:
            yield _Source(name, "blocked", "sollol-core", core_version())
        else:
            yield _Source(name, "enabled", "sollol-core", core_version(), _import(where))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ""
        version = ep.dist.version if ep.dist else ""
        if ep.name in blocked:
            yield _Source(ep.name, "blocked", dist, version)
        elif settings.load is not None and ep.name not in settings.load:
            yield _Source(ep.name, "not allowed", dist, version)
        else:
            try:
                yield _Source(ep.name, "enabled", dist, version, ep.load())
            except Exception as exc:  # a broken plugin must not take the router down
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                yield _Source(ep.name, "failed", dist, version, error=repr(exc))


def _import(where: str) -> object:
    module, _, attribute = where.partition(":")
    found: object = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        found = getattr(found, part)
    return found


def _built(target: object, settings: Settings) -> object:
    """A module as it is; a class or factory called with the router's settings."""
    if isinstance(target, ModuleType) or not callable(target):
        return target
    return target(settings)


def declared_sections(
        settings: PluginSettings) -> tuple[list[SettingsSection], frozenset[str]]:
    """The settings sections of the plugins ``settings`` allow, read before any plugin object
    exists (from the modules, classes and factories the entry points name), and the names of
    installed plugins that they do not load, whose sections are left unread."""
    declaring = Plugins.empty()
    skipped: set[str] = set()
    for source in _sources(settings):
        if source.state != "enabled":
            skipped.add(source.name)
            continue
        try:
            declaring.pm.register(source.target, name=source.name)
        except Exception as exc:  # reported by Plugins.load; its settings cannot be read
            log.warning("plugin %s cannot declare its settings: %s", source.name, exc)
    return declaring.settings_sections(), frozenset(skipped)


def plugin_attribute(module: str, name: str, distribution: str) -> Any:
    """``module.name`` from a plugin, for code that needs one plugin in particular (the Python
    API); an ImportError naming the distribution to install when it is missing."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError(f"this needs the {distribution} plugin: pip install {distribution}"
                          ) from None


def environment_variables() -> list[str]:
    """Every environment variable that sets a setting: the core's and every installed
    plugin's (for tests that clear them)."""
    sections, _ = declared_sections(PluginSettings())
    return [*ENVIRONMENT, *(name for s in sections for name in s.environment)]


def _arguments(impl: pluggy.HookImpl, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``impl`` declares (implementations may take a subset)."""
    return {name: kwargs[name] for name in impl.argnames}


async def _gather_logged(hook: str, results: Sequence[Any]) -> list[Any]:
    """Await the awaitables among hook results; a failing plugin is logged and skipped."""
    awaitables: list[Awaitable[Any]] = [r for r in results if inspect.isawaitable(r)]
    plain = [r for r in results if r is not None and not inspect.isawaitable(r)]
    if not awaitables:
        return plain
    done = await asyncio.gather(*awaitables, return_exceptions=True)
    values = list(plain)
    for value in done:
        if isinstance(value, BaseException):
            log.warning("%s: a plugin failed: %r", hook, value)
        else:
            values.append(value)
    return values


def core_version() -> str:
    try:
        return importlib.metadata.version("sollol-core")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
