"""The live dashboard: ``GET /dashboard`` (one static page, no build step) fed by server-sent
events at ``GET /dashboard/events``, one JSON state every second and soon after each change.
``GET /dashboard/state`` answers the same state once.

With API keys configured, a browser's ``EventSource`` cannot send an ``Authorization`` header, so
the dashboard's paths (and only those) also take the key as ``?key=``; ``/dashboard?key=...``
then sets a session cookie (HttpOnly, SameSite=Strict, limited to ``/dashboard``) that the page's
event stream sends by itself, and the page drops the key from the address bar. The cookie never
holds the key: it is an expiring token signed with a secret each gateway application draws at
start, and it opens the dashboard's paths only, never the API.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import importlib.resources
import ipaddress
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from attrs import define, field

from sollol_core.breaker import CircuitSnapshot
from sollol_core.gateway.common import ROUTER
from sollol_core.listening import token_accepted
from sollol_core.observatory import Observatory
from sollol_core.panels import Panel
from sollol_core.plugins import core_version
from sollol_core.router import Router
from sollol_core.types import FleetSnapshot, NodeSnapshot, Telemetry

PREFIX = "/dashboard"
#: The only paths a session cookie (or ``?key=``) opens.
PATHS = frozenset({PREFIX, PREFIX + "/events", PREFIX + "/state"})
COOKIE = "sollol_dashboard_session"
#: Where earlier versions kept the raw key; a new session deletes it from the browser.
OLD_COOKIE = "sollol_dashboard_key"
#: Every ``PERIOD_S`` a fresh state; after a change, one within ``MIN_GAP_S``.
PERIOD_S = 1.0
MIN_GAP_S = 0.2


@define(eq=False)
class Hub:
    """The dashboard's state: the observatory, and what wakes and stops the event streams."""

    observatory: Observatory
    stopping: asyncio.Event = field(factory=asyncio.Event)
    #: Counts changes; a stream remembers the generation it sent.
    generation: int = 0
    #: Event streams open now.
    streams: int = 0
    _wake: asyncio.Event = field(factory=asyncio.Event)

    def changed(self) -> None:
        self.generation += 1
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def close(self, app: web.Application | None = None) -> None:
        """End every open event stream (on the application's shutdown)."""
        self.stopping.set()
        self._wake.set()

    async def next_change(self, seen: int, timeout: float) -> None:
        """Wait until a change after generation ``seen``, the hub closes, or ``timeout``."""
        if self.generation != seen or self.stopping.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass


#: ``<expiry epoch s>.<nonce>.<base64url HMAC-SHA256 of the two>``, ASCII only.
_TOKEN = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})", re.ASCII)


@define(eq=False)
class Sessions:
    """Issues and checks dashboard session tokens, signed with a secret drawn at random for
    each gateway application (never derived from the API keys), so a restart ends every session."""

    lifetime_s: float
    #: Epoch seconds, as in the token; replaceable to see sessions expire.
    clock: Callable[[], float] = time.time
    _secret: bytes = field(factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def max_age_s(self) -> int:
        """The cookie's Max-Age: whole seconds, never 0 (which would delete the cookie)."""
        return max(1, math.ceil(self.lifetime_s))

    def issue(self) -> str:
        expiry = math.ceil(self.clock() + self.lifetime_s)
        payload = f"{expiry}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._signature(payload)}"

    def valid(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired; the signature is compared in
        constant time."""
        parts = _TOKEN.fullmatch(token)
        if parts is None:
            return False
        expiry, nonce, signature = parts.groups()
        if not hmac.compare_digest(signature, self._signature(f"{expiry}.{nonce}")):
            return False
        return self.clock() < int(expiry)

    def _signature(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


HUB = web.AppKey("dashboard_hub", Hub)
SESSIONS = web.AppKey("dashboard_sessions", Sessions)


def setup(app: web.Application) -> Hub:
    """Register the dashboard's observer on the router and add its routes."""
    router = app[ROUTER]
    hub = Hub(Observatory())
    hub.observatory.listeners.append(hub.changed)
    name = f"sollol-gateway-dashboard-{id(app):x}"
    router.plugins.register(name, hub.observatory)
    app[HUB] = hub
    app[SESSIONS] = Sessions(router.settings.gateway.dashboard_session_s)

    async def unregister(app: web.Application) -> None:
        router.plugins.unregister(name)

    app.on_shutdown.append(hub.close)
    app.on_cleanup.append(unregister)
    app.router.add_get(PREFIX, _page)
    app.router.add_get(PREFIX + "/events", _events)
    app.router.add_get(PREFIX + "/state", _state)
    return hub


def authorised(request: web.Request, keys: Sequence[str]) -> bool:
    """Whether a request for one of the dashboard's paths carries one of ``keys`` as ``?key=``
    or a valid session cookie; always False for every other path."""
    if request.path not in PATHS:
        return False
    given = request.query.get("key", "")
    if given and token_accepted(given, keys):
        return True
    return request.app[SESSIONS].valid(request.cookies.get(COOKIE, ""))


def _over_tls(request: web.Request) -> bool:
    """Whether the browser reached us over TLS: our own socket (aiohttp 3.14's ``secure`` looks at
    nothing else), or a trusted proxy that says so in ``X-Forwarded-Proto``."""
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and _trusted(
        request.remote, request.app[ROUTER].settings.gateway.trusted_proxies)


def _trusted(peer: str | None, proxies: Sequence[str]) -> bool:
    """Whether ``peer`` is one of ``proxies`` (addresses, or networks such as 10.0.0.0/8)."""
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False  # no address (a Unix socket): nothing to trust
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    for proxy in proxies:
        try:
            if address in ipaddress.ip_network(proxy, strict=False):
                return True
        except ValueError:
            continue
    return False


@functools.cache  # package data: read once per process
def _page_html() -> bytes:
    return (importlib.resources.files("sollol_core.gateway") / "static"
            / "dashboard.html").read_bytes()


def _csp_hashes(html: str, tag: str) -> str:
    """CSP sources allowing exactly the inline ``<tag>`` blocks of ``html``, or ``'none'``."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    # browsers hash the text after HTML's newline normalisation
    digests = [hashlib.sha256(b.replace("\r\n", "\n").replace("\r", "\n").encode()).digest()
               for b in blocks]
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests) or "'none'"


#: For every dashboard response; the page's own policy adds its inline script and style.
_LOCKED = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


@functools.cache
def _page_policy() -> str:
    html = _page_html().decode()
    return (f"{_LOCKED}; script-src {_csp_hashes(html, 'script')}; "
            f"style-src {_csp_hashes(html, 'style')}; connect-src 'self'")


def _headers(policy: str = _LOCKED) -> dict[str, str]:
    # no-referrer: the page's address may still hold ?key= when it loads
    return {"Cache-Control": "no-store", "Content-Security-Policy": policy,
            "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


async def _page(request: web.Request) -> web.Response:
    response = web.Response(body=_page_html(), content_type="text/html", charset="utf-8",
                            headers=_headers(_page_policy()))
    given = request.query.get("key", "")
    keys = request.app[ROUTER].settings.gateway.api_keys
    if given and token_accepted(given, keys):
        sessions = request.app[SESSIONS]
        response.set_cookie(COOKIE, sessions.issue(), path=PREFIX, max_age=sessions.max_age_s,
                            httponly=True, samesite="Strict", secure=_over_tls(request))
        if OLD_COOKIE in request.cookies:
            response.del_cookie(OLD_COOKIE, path=PREFIX)
    return response


async def _state(request: web.Request) -> web.Response:
    return web.json_response(state_of(request.app[ROUTER], request.app[HUB].observatory),
                             headers=_headers())


async def _events(request: web.Request) -> web.StreamResponse:
    hub, router = request.app[HUB], request.app[ROUTER]
    response = web.StreamResponse(headers={
        **_headers(), "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    hub.streams += 1
    try:
        await response.write(b"retry: 2000\n\n")
        while not hub.stopping.is_set():
            seen = hub.generation
            data = json.dumps(state_of(router, hub.observatory), separators=(",", ":"))
            await response.write(f"event: state\ndata: {data}\n\n".encode())
            sent = time.monotonic()
            await hub.next_change(seen, PERIOD_S)
            gap = MIN_GAP_S - (time.monotonic() - sent)
            if gap > 0 and not hub.stopping.is_set():
                await asyncio.sleep(gap)  # at most one state per MIN_GAP_S under load
    except ConnectionError:
        pass  # the browser left (a cancelled handler ends through the finally clause)
    finally:
        hub.streams -= 1
    return response


# -- the state -------------------------------------------------------------------------------


def state_of(router: Router, observatory: Observatory) -> dict[str, Any]:
    """Everything the page shows, as JSON values."""
    fleet = router.fleet.snapshot()
    circuits = {c.node: c for c in router.breakers.snapshots()}
    nodes = [_node(n, fleet, circuits.get(n.endpoint.key)) for n in fleet.nodes]
    node_keys = {n.endpoint.key for n in fleet.nodes}
    return {
        "now": time.time(),
        "version": core_version(),
        "queued": len(router.queue),
        "nodes": sorted(nodes, key=lambda n: (n["role"], n["key"])),
        "machines": [_machine(t) for t in sorted(fleet.telemetry, key=lambda t: t.host)],
        "circuits": [_circuit(c) for k, c in circuits.items() if k not in node_keys],
        "panels": [_panel(p) for p in router.plugins.dashboard_panels()],
        "decisions": observatory.recent(),
        "series": observatory.series(),
        "totals": dict(observatory.totals),
        "rate_per_s": observatory.rate(),
    }


def _node(node: NodeSnapshot, fleet: FleetSnapshot,
          circuit: CircuitSnapshot | None) -> dict[str, Any]:
    machine = fleet.telemetry_for(node.endpoint.host)
    devices = [{"name": d.name, "total_bytes": d.total_bytes, "free_bytes": d.free_bytes,
                "source": "probe"} for d in node.devices]
    if not devices and machine is not None:
        devices = [{"name": d.name, "total_bytes": d.memory_total_bytes,
                    "free_bytes": d.memory_free_bytes, "source": machine.source}
                   for d in machine.devices if d.memory_total_bytes]
    return {
        "key": node.endpoint.key, "kind": node.endpoint.kind, "address": node.endpoint.address,
        "role": node.role.value, "health": node.health.value, "detail": node.detail,
        "version": node.version, "latency_ms": node.latency_ms, "in_flight": node.in_flight,
        "parallel": node.parallel, "slots_source": node.slots_source,
        "free_bytes": fleet.free_bytes_of(node),
        "devices": devices,
        "models": [{"name": m.name, "loaded": m.loaded, "vram_bytes": m.vram_bytes}
                   for m in node.models],
        "circuit": _circuit(circuit) if circuit else {"node": node.endpoint.key,
                                                       "state": "closed", "failure_ratio": 0.0},
    }


def _machine(t: Telemetry) -> dict[str, Any]:
    return {
        "host": t.host, "source": t.source, "cpu_percent": t.cpu_percent, "load_1m": t.load_1m,
        "ram_total_bytes": t.ram_total_bytes, "ram_free_bytes": t.ram_free_bytes,
        "devices": [{"name": d.name, "kind": d.kind, "total_bytes": d.memory_total_bytes,
                     "free_bytes": d.memory_free_bytes, "utilisation_pct": d.utilisation_pct,
                     "temperature_c": d.temperature_c} for d in t.devices],
    }


def _circuit(c: CircuitSnapshot) -> dict[str, Any]:
    return {"node": c.node, "state": c.state.value, "failure_ratio": c.failure_ratio}


def _panel(panel: Panel) -> dict[str, Any]:
    return {"key": panel.key, "title": panel.title, "columns": list(panel.columns),
            "empty": panel.empty,
            "groups": [{"title": g.title, "status": g.status, "detail": g.detail,
                        "rows": [list(row) for row in g.rows]} for g in panel.groups]}
