"""The aiohttp application: lifecycle, authentication, errors for unknown paths, and SOLLOL's
own status endpoint. The Ollama and OpenAI APIs live in their own modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from sollol_core.browsers import BrowserGuard
from sollol_core.convert import unstructure
from sollol_core.gateway import dashboard, metrics, ollama, openai
from sollol_core.gateway.common import ROUTER, openai_error_body
from sollol_core.listening import bearer_token, token_accepted
from sollol_core.plugins import core_version
from sollol_core.router import Router

#: Paths anyone may call, so that load balancers and health checks can see it is up.
PUBLIC_PATHS = frozenset({"/", "/health"})
GUARD = web.AppKey("browser_guard", BrowserGuard)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(router: Router) -> web.Application:
    """The gateway for ``router``; the router starts and stops with the application."""
    gateway = router.settings.gateway
    app = web.Application(client_max_size=gateway.max_body_bytes,
                          middlewares=[_unknown_routes, _browsers, _authenticate])
    app[ROUTER] = router
    app[GUARD] = BrowserGuard.for_listener(gateway.host, origins=gateway.allowed_origins,
                                           hosts=gateway.allowed_hosts)
    app.on_response_prepare.append(_allow_origin)
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
            message = f"{request.method} {request.path} is not an endpoint of this API"
            return _api_error(request, exc.status, message)
        text = "404 page not found" if exc.status == 404 else "405 method not allowed"
        return web.Response(status=exc.status, text=text, content_type="text/plain",
                            charset="utf-8")


def _api_error(request: web.Request, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
    """An error in the shape of the API the path belongs to."""
    body: object = (openai_error_body(status, message, code=code)
                    if request.path.startswith("/v1/") else {"error": message})
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _browsers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Web pages from other sites, and requests addressed to other host names (DNS rebinding),
    are refused; allowed origins get their CORS preflight answered."""
    refusal = request.app[GUARD].refusal(request.method, request.headers)
    if refusal is not None:
        return _api_error(request, *refusal)
    if request.method == "OPTIONS" and "Origin" in request.headers and (
            "Access-Control-Request-Method" in request.headers):
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": _allowed_headers(request),
            "Access-Control-Max-Age": "600"})
    return await handler(request)


#: Request headers a page may send (Ollama's list, and SOLLOL's priority).
CORS_HEADERS = frozenset({"authorization", "content-type", "user-agent", "accept",
                          "x-requested-with", "openai-beta", "x-sollol-priority"})


def _allowed_headers(request: web.Request) -> str:
    asked = request.headers.get("Access-Control-Request-Headers", "")
    wanted = [h.strip().lower() for h in asked.split(",") if h.strip()]
    allowed = [h for h in wanted if h in CORS_HEADERS or h.startswith("x-stainless-")]
    return ", ".join(allowed or sorted(CORS_HEADERS))


async def _allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    """A page of an allowed origin may read the answer (the origin was checked on the way in)."""
    origin = request.headers.get("Origin")
    if origin is not None and response.status != 403:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Sollol-Backend, " \
            "X-Sollol-Reason, X-Sollol-Request-Id, X-Sollol-Attempts, X-Sollol-Queue-Ms"
        response.headers.add("Vary", "Origin")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[ROUTER].settings.gateway.api_keys
    if keys and request.path not in PUBLIC_PATHS:
        # the dashboard's own paths also take ?key= or its session cookie (EventSource cannot
        # send headers)
        if not token_accepted(bearer_token(request), keys) and not dashboard.authorised(
                request, keys):
            return _api_error(request, 401, "unauthorized: missing or wrong API key",
                              "invalid_api_key", {"WWW-Authenticate": "Bearer"})
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
