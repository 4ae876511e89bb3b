"""The aiohttp application: lifecycle, authentication and SOLLOL's own endpoints."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from sollol_core.convert import unstructure
from sollol_core.gateway import openai
from sollol_core.plugins import core_version
from sollol_core.router import Router

ROUTER = web.AppKey("router", Router)

#: Paths anyone may call, so that load balancers and `sollol status` can see it is up.
PUBLIC_PATHS = frozenset({"/", "/health"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(router: Router) -> web.Application:
    """The gateway for ``router``; the router starts and stops with the application."""
    app = web.Application(client_max_size=router.settings.gateway.max_body_bytes,
                          middlewares=[_authenticate])
    app[ROUTER] = router
    app.cleanup_ctx.append(_router_lifecycle)
    app.router.add_get("/", _root)  # aiohttp answers HEAD for every GET route
    app.router.add_get("/health", _root)
    app.router.add_get("/api/version", _version)
    app.router.add_get("/api/sollol/status", _status)
    openai.add_routes(app)
    return app


async def _router_lifecycle(app: web.Application) -> AsyncIterator[None]:
    await app[ROUTER].start()
    yield
    await app[ROUTER].stop()


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[ROUTER].settings.gateway.api_keys
    if keys and request.path not in PUBLIC_PATHS:
        given = request.headers.get("Authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
            return web.json_response({"error": "unauthorized: missing or wrong API key"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def _root(request: web.Request) -> web.Response:
    return web.Response(text="SOLLOL is running", content_type="text/plain", charset="utf-8")


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": core_version()})


async def _status(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    return web.json_response({
        "version": core_version(),
        "fleet": unstructure(router.fleet.snapshot()),
        "plugins": unstructure(router.plugins.infos),
    })
