"""The application of ``sollol agent``: this machine's telemetry behind a Bearer token, plus the
routes plugins add through the ``sollol_agent_app`` hook (the llamacpp plugin's ``/v1/workers``).

The core part knows no backend: it measures the machine with every installed telemetry plugin,
refuses what browsers send (other sites' pages, DNS-rebound names, cross-site body types: a page
must never start processes here) and checks the token. Whatever a plugin starts here, it stops
in the ``cleanup_ctx`` it adds, so an agent that stops leaves nothing running.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from attrs import evolve

from sollol_core.browsers import BrowserGuard
from sollol_core.config import AgentSettings, Settings
from sollol_core.convert import unstructure
from sollol_core.listening import bearer_token, token_accepted
from sollol_core.plugins import Plugins, core_version
from sollol_core.types import Telemetry

#: The settings the agent runs with (``agent.advertise`` resolved), for routes plugins add.
SETTINGS = web.AppKey("sollol_agent_settings", Settings)
PLUGINS = web.AppKey("sollol_agent_plugins", Plugins)
TOKEN = web.AppKey("sollol_agent_token", str)
GUARD = web.AppKey("sollol_agent_browser_guard", BrowserGuard)
#: What anyone may call: a liveness check that says nothing about the machine.
PUBLIC_PATHS = frozenset({"/health"})
#: Addresses that bind every interface: what a router should use instead must be found.
WILDCARDS = frozenset({"", "0.0.0.0", "::"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def advertised_host(agent: AgentSettings) -> str:
    """The address routers reach this machine by: ``advertise``, else the bind address, else
    (bound to every interface) the address this machine's outgoing traffic leaves from."""
    if agent.advertise:
        return agent.advertise
    if agent.host not in WILDCARDS:
        return agent.host
    family = socket.AF_INET6 if agent.host == "::" else socket.AF_INET
    probe = ("2001:db8::1", 9) if family == socket.AF_INET6 else ("192.0.2.1", 9)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(probe)  # UDP: picks a route and a source address, sends nothing
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostname()


def create_agent_app(plugins: Plugins, settings: Settings, *, token: str) -> web.Application:
    """The agent for this machine; ``token`` guards every route but ``/health`` (an agent without
    one would let any local process, or any page a local browser opens, start processes)."""
    if not token:
        raise ValueError("an agent needs a token (sollol_core.agent.token.resolve_token)")
    settings = evolve(settings, agent=evolve(settings.agent,
                                             advertise=advertised_host(settings.agent)))
    app = web.Application(middlewares=[_browsers, _authenticate])
    app[SETTINGS] = settings
    app[PLUGINS] = plugins
    app[TOKEN] = token
    # no extra origins or host names: routers are not browsers, and reach it by address
    app[GUARD] = BrowserGuard.for_listener(settings.agent.host, settings_hint=False)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/agent", _about)
    app.router.add_get("/v1/telemetry", _telemetry)
    plugins.setup_agent(app, settings)
    return app


@web.middleware
async def _browsers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Before the token: a page must not even learn whether its guess was right."""
    if request.path not in PUBLIC_PATHS:
        refusal = request.app[GUARD].refusal(request.method, request.headers)
        if refusal is not None:
            status, message = refusal
            return web.json_response({"error": message}, status=status)
    return await handler(request)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        if not token_accepted(bearer_token(request), (request.app[TOKEN],)):
            return web.json_response(
                {"error": "unauthorized: missing or wrong agent token (SOLLOL_AGENT_TOKEN, or "
                          "the same agent token file as the agent's)"},
                status=401, headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _about(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response({
        "version": core_version(), "hostname": socket.gethostname(),
        "advertise": settings.agent.advertise,
        "routes": sorted({r.resource.canonical for r in request.app.router.routes()
                          if r.resource is not None}),
    })


async def _telemetry(request: web.Request) -> web.Response:
    telemetry = await measure(request.app[PLUGINS], request.app[SETTINGS])
    if telemetry is None:
        return web.json_response(
            {"error": "no telemetry plugin reported on this machine (install sollol-cpu, "
                      "sollol-nvml)"}, status=503)
    return web.json_response(unstructure(telemetry))


async def measure(plugins: Plugins, settings: Settings) -> Telemetry | None:
    """This machine's telemetry, every plugin's report merged. An agent never asks other agents
    (a config file shared with the router may name them)."""
    local = evolve(settings, discovery=evolve(settings.discovery, agents=()))
    reports = await plugins.collect_telemetry(local)
    hostname = socket.gethostname()
    return next((r for r in reports if r.host == hostname), None)
