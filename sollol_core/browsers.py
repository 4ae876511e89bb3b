"""What keeps web pages away from SOLLOL's servers (the gateway and the agent).

A page in the user's browser can send requests to 127.0.0.1. Three checks keep it out, as
Ollama's own server does:

- ``Origin``: a request that carries one must come from loopback or a local app (``app://``,
  ``file://``, ...) or an origin the user allowed; anything else is refused before it runs.
- ``Host``: a server listening on loopback answers only requests addressed to a loopback,
  private or local name, so a site whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding)
  is refused.
- ``Content-Type``: a JSON route refuses the types browsers send cross-site without asking
  first (``text/plain``, multipart and form bodies); only tools that are not browsers may use the
  form type (``curl -d`` sends it). ``application/json``, or no type, is what clients send.

Pure functions over header values; the servers turn a refusal into a 403/415 in their API's shape.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping

from attrs import field, frozen

#: Ollama's built-in origins: loopback over http(s) on any port, and local app schemes.
LOCAL_ORIGINS = (
    *(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
      for scheme in ("http", "https") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
#: Name suffixes a ``Host`` may end in on a loopback listener (Ollama's list).
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
#: Media types that browsers send cross-site without a preflight (CORS "simple" requests).
_FORM = "application/x-www-form-urlencoded"
_SIMPLE = frozenset({"text/plain", "multipart/form-data", _FORM})


def _pattern(origins: Iterable[str]) -> re.Pattern[str]:
    """One regular expression for origin patterns in which ``*`` matches anything."""
    parts = ("".join(".*" if c == "*" else re.escape(c) for c in o.strip().lower())
             for o in origins if o.strip())
    return re.compile("|".join(f"(?:{p})" for p in parts) or "(?!)")


@frozen
class BrowserGuard:
    """The checks for one server: which origins and ``Host`` names it accepts."""

    #: Origins allowed besides :data:`LOCAL_ORIGINS` (``*`` wildcards; ``*`` alone: any).
    extra_origins: tuple[str, ...] = ()
    #: Check ``Host`` (only a server bound to loopback does, as Ollama).
    check_host: bool = True
    extra_hosts: tuple[str, ...] = ()
    #: Refusals name the setting that allows more (a server without such settings: False).
    settings_hint: bool = True
    _origins: re.Pattern[str] = field(init=False, repr=False)
    _hostname: str = field(init=False, repr=False, factory=lambda: socket.gethostname().lower())
    #: Verdicts on ``Host`` values seen (clients use a handful): the check runs per request.
    _hosts: dict[str, bool] = field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_origins", _pattern((*LOCAL_ORIGINS, *self.extra_origins)))

    @classmethod
    def for_listener(cls, bind_host: str, *, origins: Iterable[str] = (),
                     hosts: Iterable[str] = (), settings_hint: bool = True) -> BrowserGuard:
        """The guard of a server bound to ``bind_host``: the Host check only on loopback."""
        from sollol_core.types import is_loopback

        return cls(tuple(origins), is_loopback(bind_host), tuple(h.lower() for h in hosts),
                   settings_hint)

    def origin_allowed(self, origin: str) -> bool:
        return self._origins.fullmatch(origin.strip().lower()) is not None

    def host_allowed(self, host: str) -> bool:
        """Whether a ``Host`` header value names this machine the way a local client would."""
        name = _host_name(host)
        if not self.check_host or name in self.extra_hosts:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return name in ("localhost", self._hostname) or name.endswith(LOCAL_SUFFIXES)
        return (address.is_loopback or address.is_private or address.is_unspecified
                or address.is_link_local)

    def refusal(self, method: str, headers: Mapping[str, str]) -> tuple[int, str] | None:
        """(status, message) when the request must not run; None when it may."""
        host = headers.get("Host", "")
        allowed = self._hosts.get(host)
        if allowed is None:
            if len(self._hosts) > 256:  # a client inventing names cannot grow it
                self._hosts.clear()
            allowed = self._hosts[host] = self.host_allowed(host)
        if not allowed:
            hint = (" (add it to allowed_hosts if a proxy forwards it)"
                    if self.settings_hint else "")
            return 403, f"requests addressed to host {_printable(host)!r} are refused{hint}"
        origin = headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin):
            hint = (" (add it to allowed_origins to let that site use this server)"
                    if self.settings_hint else "")
            return 403, f"requests from origin {_printable(origin)!r} are refused{hint}"
        if method == "POST":
            return content_type_refusal(headers)
        return None


def is_browser(headers: Mapping[str, str]) -> bool:
    """Whether a browser sent this: browsers add ``Origin`` to POSTs and ``Sec-Fetch-*``."""
    return "Origin" in headers or "Sec-Fetch-Mode" in headers or "Sec-Fetch-Site" in headers


def content_type_refusal(headers: Mapping[str, str]) -> tuple[int, str] | None:
    """A JSON body may not come as one of the types a browser sends cross-site without asking
    first (``text/plain``, ``multipart/form-data``, form encoding): only clients that are not
    browsers may use the form type (``curl -d`` sends it). Other types, which a browser must
    ask about first (and is refused), are read as JSON whatever they say, as Ollama does."""
    raw = headers.get("Content-Type", "")
    media = raw.split(";", 1)[0].strip().lower()
    if media not in _SIMPLE or (media == _FORM and not is_browser(headers)):
        return None
    return 415, (f"expected Content-Type application/json, got {_printable(raw)!r}")


def _host_name(host: str) -> str:
    """The name part of a ``Host`` value: ``[::1]:80`` -> ``::1``, ``a:80`` -> ``a``."""
    text = host.strip().lower()
    if text.startswith("["):
        return text[1:text.index("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _printable(text: str) -> str:
    """At most 100 printable characters of a client's header value, for a message."""
    return "".join(c if c.isprintable() else "?" for c in text[:100])
