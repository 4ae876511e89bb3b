"""A router's client for ``sollol agent``: its telemetry, and JSON calls for plugins' routes.

Agents are named in ``[discovery] agents`` (``SOLLOL_AGENTS``); the router sends
``[discovery] agent_token`` (``SOLLOL_AGENT_TOKEN``), else the token in the agent token file, as a
Bearer token (:mod:`sollol_core.agent.token`). Every failure is an :class:`AgentError` whose
message names the agent and says what to check.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from attrs import evolve, frozen

from sollol_core.agent.token import TokenFileError, resolve_token
from sollol_core.config import AGENT_PORT, Settings
from sollol_core.convert import structure
from sollol_core.errors import SollolError
from sollol_core.types import Endpoint, Telemetry

#: The kind of an agent's endpoint (agents are not nodes: no plugin probes this kind).
KIND = "sollol-agent"


class AgentError(SollolError):
    """An agent did not answer, refused the token, or refused the request."""


def agent_endpoints(settings: Settings) -> list[Endpoint]:
    """The agents the settings name, once each, in order."""
    found: dict[str, Endpoint] = {}
    for text in settings.discovery.agents:
        endpoint = Endpoint.parse(KIND, text, default_port=AGENT_PORT)
        found.setdefault(endpoint.key, endpoint)
    return list(found.values())


@frozen
class AgentClient:
    """Calls to one agent over a session the caller holds."""

    endpoint: Endpoint
    session: aiohttp.ClientSession
    token: str = ""
    timeout_s: float = 5.0
    #: Why the token file could not be read: every call fails with it (as an AgentError).
    token_problem: str = ""

    @classmethod
    def of(cls, endpoint: Endpoint, session: aiohttp.ClientSession,
           settings: Settings) -> AgentClient:
        """A client with the router's token: the configured one, else the token file's (read
        each time, so a file copied in later is used; a router never creates it)."""
        try:
            token, problem = resolve_token(settings, create=False), ""
        except TokenFileError as exc:
            token, problem = "", str(exc)
        return cls(endpoint, session, token, settings.health.timeout_s, problem)

    @property
    def base_url(self) -> str:
        return f"http://{self.endpoint.address}"

    async def call(self, method: str, path: str, *, body: Any = None,
                   timeout_s: float | None = None) -> Any:
        """One JSON request; the decoded JSON answer, or :class:`AgentError`."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        where = f"agent {self.endpoint.address}"
        if self.token_problem:
            raise AgentError(f"{where}: {self.token_problem}")
        try:
            async with self.session.request(method, self.base_url + path, json=body,
                                            headers=headers, timeout=timeout) as response:
                if response.status == 401:
                    raise AgentError(f"{where} refused the token: set SOLLOL_AGENT_TOKEN (or "
                                     "[discovery] agent_token) to the agent's, or copy the "
                                     "agent's token file here (SOLLOL_AGENT_TOKEN_FILE)")
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                if response.status >= 400:
                    detail = answer.get("error") if isinstance(answer, dict) else None
                    raise AgentError(f"{where}: {method} {path}: {response.status} "
                                     f"{detail or response.reason}")
                return answer
        except aiohttp.ClientError as exc:
            raise AgentError(f"{where} does not answer ({exc}); is `sollol agent` running "
                             "there?") from None
        except TimeoutError:
            raise AgentError(f"{where} did not answer within {timeout.total:g} s") from None

    async def telemetry(self) -> Telemetry:
        """The agent's machine, filed under the address the router knows it by (so placement
        finds it for the nodes on that address)."""
        body = await self.call("GET", "/v1/telemetry")
        try:
            measured = structure(body, Telemetry)
        except Exception as exc:
            raise AgentError(f"agent {self.endpoint.address} sent telemetry this router cannot "
                             f"read ({exc}); are both the same SOLLOL version?") from None
        return evolve(measured, host=self.endpoint.host, source=f"agent:{measured.source}")
