"""The plugin manager: the only module that calls ``pm.hook.*``.

Nothing is loaded when this module is imported. :meth:`Plugins.load` registers the built-in
plugins, then the ``sollol`` entry points that the settings allow, then checks every
implementation against :mod:`sollol_core.hookspecs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any, Literal

import click
import pluggy
from attrs import define, frozen

from sollol_core import hookspecs
from sollol_core.config import PluginSettings, Settings
from sollol_core.errors import PluginError
from sollol_core.hookspecs import Chunk
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

#: Default plugins, registered like any other and blockable by these names.
BUILTIN_PLUGINS: dict[str, str] = {
    "builtin-placement": "sollol_core.builtin.placement",
    "builtin-agents": "sollol_core.builtin.agents",
}

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
    def load(cls, settings: PluginSettings | None = None, *,
             extra: Iterable[tuple[str, object]] = ()) -> Plugins:
        """Built-ins, then allowed entry points, then ``extra`` (name, plugin) pairs; checked."""
        settings = settings or PluginSettings()
        self = cls.empty()
        blocked = set(settings.disable)
        for name in blocked:
            self.pm.set_blocked(name)
        for name, module in BUILTIN_PLUGINS.items():
            if name in blocked:
                self.infos.append(PluginInfo(name, "blocked", "sollol-core"))
                continue
            self._register(name, importlib.import_module(module), "sollol-core", core_version())
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            if ep.name in blocked:
                self.infos.append(PluginInfo(ep.name, "blocked", dist, version))
                continue
            if settings.load is not None and ep.name not in settings.load:
                self.infos.append(PluginInfo(ep.name, "not allowed", dist, version))
                continue
            if self.pm.has_plugin(ep.name):
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the router down
                log.warning("plugin %s failed to load: %s", ep.name, exc)
                self.infos.append(PluginInfo(ep.name, "failed", dist, version, error=repr(exc)))
                continue
            self._register(ep.name, plugin, dist, version)
        for name, plugin in extra:
            if name not in blocked:
                self._register(name, plugin, "", "")
        self.pm.check_pending()
        return self

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

    def place(self, request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
        decision: Decision | None = self.pm.hook.sollol_place(request=request, fleet=fleet)
        return decision

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
                results.append(impl.function(**_arguments(impl, **kwargs)))
            except Exception as exc:
                log.warning("%s: plugin %s failed: %r", caller.name, impl.plugin_name, exc)
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
