"""Propagation only: what the plugin does when no exporter is configured.

Nothing is recorded then, so no span is made at all (the SDK's non-recording spans still cost a
gateway request a fifth of its CPU); a backend still gets a W3C ``traceparent``: the caller's trace
(the gateway's incoming header, else the application's current span) with a new span id and the
caller's sampled flag, or a fresh unsampled trace.
"""

from __future__ import annotations

import contextvars
import random
import re
from collections.abc import Mapping

from opentelemetry import trace

#: version-traceid-parentid-flags, lower-case hex (W3C Trace Context, level 1).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class Incoming:
    """The trace a gateway request arrived in, if it came with a valid ``traceparent``."""

    __slots__ = ("flags", "trace_id", "tracestate")

    def __init__(self, trace_id: str, flags: str, tracestate: str) -> None:
        self.trace_id, self.flags, self.tracestate = trace_id, flags, tracestate

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Incoming | None:
        match = _TRACEPARENT.match(headers.get("traceparent", "").strip())
        if match is None:
            return None
        version, trace_id, parent_id, flags = match.groups()
        if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
            return None
        return cls(trace_id, flags, headers.get("tracestate", ""))


INCOMING: contextvars.ContextVar[Incoming | None] = contextvars.ContextVar(
    "sollol_otel_incoming", default=None)


def upstream_headers() -> dict[str, str]:
    """The ``traceparent`` (and ``tracestate``) for one upstream attempt."""
    incoming = INCOMING.get()
    if incoming is not None:
        trace_id, flags, state = incoming.trace_id, incoming.flags, incoming.tracestate
    else:
        current = trace.get_current_span().get_span_context()
        if current.is_valid:
            trace_id, flags = f"{current.trace_id:032x}", f"{int(current.trace_flags):02x}"
            state = current.trace_state.to_header()
        else:
            trace_id, flags, state = f"{_nonzero(128):032x}", "00", ""
    headers = {"traceparent": f"00-{trace_id}-{_nonzero(64):016x}-{flags}"}
    if state:
        headers["tracestate"] = state
    return headers


def _nonzero(bits: int) -> int:
    while True:
        value = random.getrandbits(bits)
        if value:
            return value
