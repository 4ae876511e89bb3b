"""Where Ollama nodes are: configuration, ``OLLAMA_HOST``, localhost, and an optional sweep.

Nodes the user named are kept even when they do not answer (so ``sollol discover`` shows them as
down). Everything else counts only if it answers Ollama's ``/api/version``: an open port is not an
Ollama. ``OLLAMA_HOST`` and localhost (implicit nodes) are tried only when no node list is
configured, or with ``discovery.implicit_nodes = true``: a configured list is the whole fleet, and
whatever answers on those ports would otherwise get users' prompts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Iterable, Mapping

import aiohttp
from attrs import define, field

from sollol_core.config import Settings
from sollol_core.types import Endpoint, split_host_port
from sollol_ollama.settings import OllamaSettings

KIND = "ollama"
DEFAULT_PORT = 11434
#: Probes a sweep runs at once: a /24 is 254 addresses, so about four rounds of the timeout.
SWEEP_CONCURRENCY = 64
#: A sweep's result is reused this long: the network changes slowly, probes run every few seconds.
SWEEP_TTL_S = 60.0
#: Where Ollama listens when nobody says otherwise.
LOCALHOST = f"127.0.0.1:{DEFAULT_PORT}"


def from_ollama_host(value: str) -> str | None:
    """``OLLAMA_HOST`` as Ollama's clients read it -> ``host:port`` (None when unusable)."""
    text = value.strip().strip("'\"")
    if not text:
        return None
    default = DEFAULT_PORT
    if text.startswith("http://"):
        default, text = 80, text[len("http://"):]
    elif text.startswith("https://"):
        default, text = 443, text[len("https://"):]
    text = text.split("/", 1)[0]
    if text.startswith(":"):
        text = "0.0.0.0" + text
    try:
        host, port = split_host_port(text, default)
    except ValueError:
        return None
    if host in {"0.0.0.0", "::", ""}:  # a bind-everywhere address means "this machine" to clients
        host = "127.0.0.1"
    return Endpoint(KIND, host, port).address


async def answers_ollama(session: aiohttp.ClientSession, address: str, timeout_s: float) -> bool:
    try:
        async with session.get(f"http://{address}/api/version",
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                return False
            body = await response.json(content_type=None)
            return isinstance(body, dict) and isinstance(body.get("version"), str)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False


def implicit_nodes_wanted(settings: Settings) -> bool:
    """Whether ``OLLAMA_HOST`` and localhost join the fleet: ``discovery.implicit_nodes``, or
    when that is unset (auto), only while no Ollama node is named."""
    choice = settings.discovery.implicit_nodes
    return not settings.section(OllamaSettings).nodes if choice is None else choice


@define
class Discovery:
    #: localhost's Ollama address (tests stand an emulator on another port in for it).
    localhost: str = LOCALHOST
    _sweeps: dict[tuple[str, ...], tuple[float, list[str]]] = field(factory=dict)

    async def discover(self, session: aiohttp.ClientSession, settings: Settings,
                       environ: Mapping[str, str] | None = None) -> list[Endpoint]:
        env = os.environ if environ is None else environ
        named = [Endpoint.parse(KIND, a, default_port=DEFAULT_PORT, source="config")
                 for a in settings.section(OllamaSettings).addresses()]
        implicit: list[tuple[str, str]] = []
        if implicit_nodes_wanted(settings):
            if (address := from_ollama_host(env.get("OLLAMA_HOST", ""))) is not None:
                implicit.append((address, "OLLAMA_HOST"))
            implicit.append((self.localhost, "localhost"))
        timeout = settings.discovery.timeout_s
        known = {e.address for e in named}
        checks = [(a, s) for a, s in implicit if a not in known]
        answers = await asyncio.gather(*(answers_ollama(session, a, timeout) for a, _ in checks))
        found = list(named)
        for (address, source), ok in zip(checks, answers, strict=True):
            if ok and address not in known:
                known.add(address)
                found.append(Endpoint.parse(KIND, address, source=source))
        if settings.discovery.subnets:
            for address in await self.sweep(session, settings.discovery.subnets, timeout):
                if address not in known:
                    known.add(address)
                    found.append(Endpoint.parse(KIND, address, source="network"))
        return found

    async def sweep(self, session: aiohttp.ClientSession, subnets: Iterable[str],
                    timeout_s: float) -> list[str]:
        """Addresses in ``subnets`` that answer Ollama's API on its port; cached for a minute."""
        key = tuple(subnets)
        cached = self._sweeps.get(key)
        if cached is not None and time.monotonic() - cached[0] < SWEEP_TTL_S:
            return cached[1]
        gate = asyncio.Semaphore(SWEEP_CONCURRENCY)

        async def check(address: str) -> str | None:
            async with gate:
                return address if await answers_ollama(session, address, timeout_s) else None

        hosts = [f"{Endpoint(KIND, str(ip), DEFAULT_PORT).address}"
                 for net in key for ip in ipaddress.ip_network(net, strict=False).hosts()]
        found = [a for a in await asyncio.gather(*(check(h) for h in hosts)) if a]
        self._sweeps[key] = (time.monotonic(), found)
        return found
