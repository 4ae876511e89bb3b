"""The aiohttp application: lifecycle, authentication, errors for unknown paths, and SOLLOL's
own status endpoint. The Ollama and OpenAI APIs live in their own modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from sollol_core.convert import unstructure
from sollol_core.gateway import dashboard, metrics, ollama, openai
from sollol_core.gateway.common import ROUTER
from sollol_core.listening import bearer_token, token_accepted
from sollol_core.plugins import core_version
from sollol_core.router import Router

#: Paths anyone may call, so that load balancers and health checks can see it is up.
PUBLIC_PATHS = frozenset({"/", "/health"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(router: Router) -> web.Application:
    """The gateway for ``router``; the router starts and stops with the application."""
    app = web.Application(client_max_size=router.settings.gateway.max_body_bytes,
                          middlewares=[_unknown_routes, _authenticate])
    app[ROUTER] = router
    app.cleanup_ctx.append(_router_lifecycle)
    app.router.add_get("/health", _health)  # aiohttp answers HEAD for every GET route
    app.router.add_get("/api/sollol/status", _status)
    ollama.add_routes(app)
    openai.add_routes(app)
    metrics.setup(app)
    dashboard.setup(app)
    router.plugins.setup_gateway(app)
    return app


async def _router_lifecycle(app: web.Application) -> AsyncIterator[None]:
    await app[ROUTER].start()
    yield
    await app[ROUTER].stop()


@web.middleware
async def _unknown_routes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 and 405 in the shape of the API the path belongs to."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if request.path.startswith("/v1/"):
            kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
            message = f"{request.method} {request.path} is not an endpoint of this API"
            return web.json_response({"error": {"message": message, "type": kind,
                                                "param": None, "code": None}},
                                     status=exc.status)
        text = "404 page not found" if exc.status == 404 else "405 method not allowed"
        return web.Response(status=exc.status, text=text, content_type="text/plain",
                            charset="utf-8")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[ROUTER].settings.gateway.api_keys
    if keys and request.path not in PUBLIC_PATHS:
        # the dashboard's own paths also take ?key= or its session cookie (EventSource cannot
        # send headers)
        if not token_accepted(bearer_token(request), keys) and not dashboard.authorised(
                request, keys):
            message = "unauthorized: missing or wrong API key"
            body: object = ({"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}}
                            if request.path.startswith("/v1/") else {"error": message})
            return web.json_response(body, status=401, headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _status(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    return web.json_response({
        "version": core_version(),
        "fleet": unstructure(router.fleet.snapshot()),
        "circuits": unstructure(router.breakers.snapshots()),
        "queued": len(router.queue),
        "plugins": unstructure(router.plugins.infos),
        "plugins_status": router.plugins.status(),
    })
