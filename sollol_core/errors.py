"""Exceptions that cross module boundaries, each with a message fit to show a user."""

from __future__ import annotations

from collections.abc import Sequence


class SollolError(Exception):
    """Base of SOLLOL's own errors."""


class ConfigError(SollolError):
    """Bad settings: one line per problem, naming the key, its source and the expected form."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("\n".join(self.lines))


class PluginError(SollolError):
    """A plugin broke the hook contract (e.g. an ``async def`` firstresult implementation)."""


class NoRouteError(SollolError):
    """No policy could place the request (unknown model, no healthy node...)."""


class BackendError(SollolError):
    """A backend failed before its first chunk; the router may fail over to another node.

    ``status`` is the node's HTTP status, if it answered one: a 4xx is its verdict on the
    request (relayed to the client with ``detail``, the node's own message), not a fault.
    ``exclude``: endpoint keys this failure rules out for the rest of the request besides the
    attempt's own (a shard plan's workers, when its coordinator could not start on them)."""

    def __init__(self, message: str, *, status: int | None = None,
                 retryable: bool = True, detail: str | None = None,
                 exclude: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.detail = detail
        self.exclude = exclude


class QueueFullError(SollolError):
    """Every candidate is at capacity and the wait queue is full."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
