"""The hook specifications of SOLLOL: the whole contract between the core and its plugins.

Conventions, as in pytest:

* Every hook is named ``sollol_*`` and every argument is passed by keyword, so an implementation
  may accept only the arguments it needs.
* ``firstresult`` hooks stop at the first implementation that returns something other than
  ``None``. They are plain functions: an implementation decides *synchronously* whether the call is
  its business (return ``None`` if not). Where the answer needs I/O, it returns an awaitable that
  the core awaits. The plugin manager refuses ``async def`` implementations of firstresult hooks,
  because a coroutine is never ``None`` and would hide every later plugin.
* Hooks that do I/O return awaitables (or ``None``); the core awaits them. Placement never does I/O.
* Implementations are called from the core's event loop; they must not block it.

The one caller of these hooks is :mod:`sollol_core.plugins`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import click
import pluggy
from aiohttp import web
from prometheus_client.core import Metric

from sollol_core.config import Settings, SettingsSection
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

PROJECT = "sollol"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: One streamed piece of a response, in Ollama's response shape (the last one has ``done: true``).
Chunk = Mapping[str, Any]


# -- discovery ---------------------------------------------------------------------------------


@hookspec
def sollol_discover(settings: Settings) -> Awaitable[Sequence[Endpoint]] | None:
    """Find the endpoints of the backend kinds this plugin serves.

    :param settings: the effective settings (file, environment and flags merged).

    Called by ``sollol discover``, when the gateway starts and periodically after. Look in
    configuration (``settings.discovery``), the environment and, if the user enabled it, the
    network. Return an awaitable of endpoints, or ``None`` when there is nothing to look for. An
    endpoint that several plugins return is kept once; failures are logged and do not stop other
    plugins.
    """


# -- health ------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sollol_probe(endpoint: Endpoint, settings: Settings) -> Awaitable[NodeSnapshot] | None:
    """Probe one endpoint into a frozen :class:`~sollol_core.types.NodeSnapshot`.

    :param endpoint: an endpoint some plugin discovered.
    :param settings: the effective settings (timeouts are in ``settings.health``).

    Called for every endpoint on the health schedule, never on the request path. firstresult:
    return ``None`` at once for an endpoint of a kind you do not serve; otherwise an awaitable of
    the snapshot. A probe reports failure as a snapshot (``Health.DOWN`` with a ``detail``), not as
    an exception. The probe must be cheap: never run a completion.
    """


# -- telemetry ---------------------------------------------------------------------------------


@hookspec
def sollol_collect_telemetry(
    settings: Settings,
) -> Awaitable[Telemetry | Sequence[Telemetry] | None] | None:
    """Measure this machine (or the machines this plugin can reach) for placement.

    :param settings: the effective settings.

    Called on the health schedule (and by ``sollol agent`` for each telemetry request). Each
    telemetry plugin fills the fields it knows (device memory, utilisation, CPU, RAM, process
    memory) and the core merges the reports per host. Return one report, several (one per
    machine, e.g. one per agent), or ``None`` (or an awaitable of ``None``) when there is nothing
    to report, e.g. no GPU.
    """


# -- placement ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sollol_place(request: InferenceRequest, fleet: FleetSnapshot,
                 settings: Settings) -> Decision | None:
    """Choose where a request runs: one endpoint, or a shard plan over RPC workers.

    :param request: the request to place (model, operation, priority, body).
    :param fleet: a frozen snapshot of every known node and the latest telemetry.
    :param settings: the router's settings (a plugin's own are ``settings.section(Type)``).

    Called once per attempt of every request, on the request path: it must be pure, synchronous
    and fast, and do no I/O; everything it weighs arrives in its arguments (what a plugin learns,
    such as a model's size, reaches placement in the snapshot). firstresult: the first policy
    that returns a :class:`~sollol_core.types.Decision` wins; return ``None`` to defer to the
    next policy. This is where third-party policies plug in; the built-in default is registered
    ``trylast``. A decision must name its policy and give a reason a person can read.
    """


@hookspec
def sollol_fleet_facts() -> object | None:
    """What this plugin has learnt that its placement weighs, as one frozen value.

    Called each time the core takes a fleet snapshot (for every decision): return the same
    object until something changed (cache it; build a new one on change), or ``None``. The
    value reaches every :func:`sollol_place` in ``fleet.facts``, by its type:
    ``fleet.fact(MyFacts)``. This keeps placement a pure function of its arguments while a
    plugin learns (a model's size, the workers its processes hold). No I/O.
    """


# -- execution ---------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sollol_execute(
    request: InferenceRequest, decision: Decision, settings: Settings
) -> AsyncIterator[Chunk] | None:
    """Run a placed request on the backend the decision names, streaming its response.

    :param request: the request.
    :param decision: where to run it (``decision.target`` or ``decision.plan``).
    :param settings: the effective settings (timeouts are in ``settings.routing``).

    Called after placement, once per attempt. firstresult: return ``None`` at once if the
    decision's backend kind is not yours; otherwise an async iterator of chunks in Ollama's
    response shape, relayed as they come (a non-streamed request gets one chunk). Raise
    :class:`~sollol_core.errors.BackendError` before the first chunk to let the router fail over.
    """


# -- observation -------------------------------------------------------------------------------


@hookspec
def sollol_on_decision(decision: Decision, request: InferenceRequest) -> Awaitable[None] | None:
    """Observe a routing decision as it is made (tracing, metrics, dashboard).

    :param decision: the decision, with candidates, scores and reason.
    :param request: the request it places.

    Called for every decision, before execution starts, in the request's context
    (``contextvars``: a tracer's current span is the request's). Must be quick; return an
    awaitable for slow work. An observer's failure is logged and never fails the request.
    """


@hookspec
def sollol_on_attempt(
    request: InferenceRequest, decision: Decision, attempt: int
) -> Mapping[str, str] | None:
    """Observe the start of one attempt to run a request on the backend ``decision`` names.

    :param request: the request.
    :param decision: where this attempt runs.
    :param attempt: 1 for the first attempt, 2 after the first fail-over, and so on.

    Called right before :func:`sollol_execute`, in the request's context (``contextvars``), so a
    tracing plugin can start the attempt's client span here. Return HTTP headers to send to the
    backend with this attempt (e.g. W3C ``traceparent``), or ``None``; executors forward them
    (``request.upstream_headers``). Synchronous and quick. Every attempt that starts also ends in
    :func:`sollol_on_attempt_finished`.
    """


@hookspec
def sollol_on_attempt_finished(record: AttemptRecord) -> Awaitable[None] | None:
    """Observe the end of one attempt: failed before its first chunk, or its stream ended.

    :param record: the attempt, with its error (if any), time to first chunk and token counts.

    Called once for every attempt that :func:`sollol_on_attempt` saw start. Same rules as
    :func:`sollol_on_decision`.
    """


@hookspec
def sollol_on_request_finished(record: RequestRecord) -> Awaitable[None] | None:
    """Observe a finished request: duration, queue time, attempts, error.

    :param record: what happened, with the decision that was used last.

    Called once per request, successful or not, after the last chunk was sent. Same rules as
    :func:`sollol_on_decision`.
    """


# -- status --------------------------------------------------------------------------------------


@hookspec
def sollol_status() -> Mapping[str, Any] | None:
    """Describe what this plugin runs, for people: ``{"section": {...}}``.

    Called by the gateway's status endpoint, ``sollol status`` and the Python API's
    ``get_stats()``. Return JSON-serialisable values keyed by a section name (e.g. coordinators
    and the workers they hold), or ``None``. Must be quick and do no I/O.
    """


# -- gateway ---------------------------------------------------------------------------------------


@hookspec
def sollol_gateway_app(app: web.Application) -> None:
    """Extend the gateway's aiohttp application before it starts: routes, middlewares,
    ``cleanup_ctx``.

    :param app: the application; its router is ``app[sollol_core.gateway.common.ROUTER]``.

    Called once per application, after the core's routes and middlewares are added; a middleware
    appended here runs inside the core's (after authentication). Not called for the Python API,
    which has no HTTP server.
    """


@hookspec
def sollol_agent_app(app: web.Application, settings: Settings) -> None:
    """Extend the application of ``sollol agent`` (this machine's daemon) before it starts.

    :param app: the agent's application; its token check already guards every route added here.
    :param settings: the effective settings; ``settings.agent`` holds the agent's bind address,
        the address it advertises to routers (``advertise``) and ``allow_remote``.

    Called once per agent application, after the core's routes (``/v1/telemetry``). Backend
    plugins add the routes through which a router manages this machine's processes (the llamacpp
    plugin: ``/v1/workers``) and a ``cleanup_ctx`` that stops whatever they started: an agent
    that stops leaves no process behind.
    """


# -- lifecycle ---------------------------------------------------------------------------------


@hookspec
def sollol_lifespan(settings: Settings) -> AbstractAsyncContextManager[None] | None:
    """Hold resources for as long as a router runs (HTTP sessions, child processes).

    :param settings: the effective settings.

    Called when a router (or a one-shot command such as ``sollol discover``) starts. Return an
    async context manager: the core enters every plugin's before the first probe and exits them,
    in reverse order, when it stops, also after errors. Whatever the plugin started must be stopped
    on exit.
    """


# -- registration ------------------------------------------------------------------------------


@hookspec
def sollol_settings_sections() -> SettingsSection | Sequence[SettingsSection] | None:
    """Declare this plugin's own settings: a TOML table, its environment variables and options.

    Called before any plugin object exists (on the module, or on the class an entry point
    names: make it a ``staticmethod``), whenever settings are loaded. The core reads the section
    with the same precedence (flags > environment > file > defaults) and the same one-line
    errors as its own, and hands the values to the plugin in every ``settings`` argument:
    ``settings.section(MySettings)``. Return one
    :class:`~sollol_core.config.SettingsSection`, several, or ``None``. Pure: no I/O.
    """


@hookspec
def sollol_metrics() -> Iterable[Metric] | None:
    """Prometheus metric families for the gateway's ``/metrics``.

    Called at each scrape. Return ``prometheus_client.core`` families (``GaugeMetricFamily``...)
    describing what this plugin runs, or ``None``. Must be quick and do no I/O; a failure is
    logged and skipped.
    """


@hookspec
def sollol_dashboard_panels() -> Panel | Sequence[Panel] | None:
    """Tables this plugin adds to the gateway's dashboard (:class:`~sollol_core.panels.Panel`).

    Called for every dashboard update (about once a second while a page is open). Must be quick
    and do no I/O; a failure is logged and skipped.
    """



@hookspec
def sollol_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``sollol`` command line (e.g. ``sollol llamacpp install``).

    :param cli: the top-level click group.

    Called once when the command line starts, after plugins are loaded.
    """
