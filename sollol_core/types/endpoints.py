"""Where requests go: network addresses (:class:`Endpoint`, :func:`split_host_port`,
:func:`is_loopback`) and model names (:func:`model_key`, :func:`same_model`).

The bottom of :mod:`sollol_core.types`: it imports nothing from the other modules of the package.
"""

from __future__ import annotations

import functools
import ipaddress

from attrs import frozen


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, ``"http://host:port/"`` or a bare host -> (host, port).

    Raises ValueError saying what is wrong (the caller names the text).
    """
    raw = text.strip()
    if "://" in raw:
        raw = raw.split("://", 1)[1]
    raw = raw.rstrip("/")
    if not raw:
        raise ValueError("not host:port")
    host, port_text = raw, ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise ValueError("not host:port")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            raise ValueError("not host:port")
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif raw.count(":") > 1:
        try:
            ipaddress.IPv6Address(raw)  # a bare IPv6 address, no port
        except ValueError:
            raise ValueError("not host:port") from None
    if not host:
        raise ValueError("no host")
    if port_text:
        if not port_text.isdigit():
            raise ValueError("the port is not a number")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError("no port")
    if not 0 < port < 65536:
        raise ValueError("the port is outside 1-65535")
    return host, port


@functools.lru_cache(maxsize=4096)  # asked per decision; hosts are few
def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@frozen
class Endpoint:
    """One network address that serves one backend kind.

    ``kind`` is owned by the plugin that understands it ("ollama", "llamacpp-rpc", ...): the core
    never branches on it. ``source`` says how we learnt of it (config, env, network, ...).
    """

    kind: str
    host: str
    port: int
    source: str = "config"

    @classmethod
    def parse(cls, kind: str, text: str, *, default_port: int | None = None,
              source: str = "config") -> Endpoint:
        host, port = split_host_port(text, default_port)
        return cls(kind=kind, host=host, port=port, source=source)

    @functools.cached_property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @functools.cached_property
    def key(self) -> str:
        """Stable identity: kind and address (the source does not change who it is)."""
        return f"{self.kind}://{self.address}"


@functools.lru_cache(maxsize=4096)
def model_key(name: str) -> str:
    """Ollama's naming rule: ``llama3.2`` and ``llama3.2:latest`` are one model."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    return model_key(a) == model_key(b)
