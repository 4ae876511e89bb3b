"""The ``otel`` entry point: one :class:`~sollol_otel.tracing.OtelPlugin` configured from the
OTEL_* environment when a router starts.

An application that wants the plugin object (to watch a Python API pool's queue, say) takes
:data:`PLUGIN`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sollol_core.config import Settings
from sollol_core.hookspecs import hookimpl
from sollol_core.types import AttemptRecord, Decision, InferenceRequest, RequestRecord
from sollol_otel.tracing import OtelPlugin

PLUGIN = OtelPlugin()


@hookimpl
def sollol_lifespan(settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    return PLUGIN.sollol_lifespan(settings)


@hookimpl
def sollol_status() -> Mapping[str, Any] | None:
    return PLUGIN.sollol_status()


@hookimpl
def sollol_gateway_app(app: web.Application) -> None:
    PLUGIN.sollol_gateway_app(app)


@hookimpl
def sollol_on_decision(decision: Decision, request: InferenceRequest) -> None:
    PLUGIN.sollol_on_decision(decision, request)


@hookimpl
def sollol_on_attempt(request: InferenceRequest, decision: Decision,
                      attempt: int) -> Mapping[str, str] | None:
    return PLUGIN.sollol_on_attempt(request, decision, attempt)


@hookimpl
def sollol_on_attempt_finished(record: AttemptRecord) -> None:
    PLUGIN.sollol_on_attempt_finished(record)


@hookimpl
def sollol_on_request_finished(record: RequestRecord) -> None:
    PLUGIN.sollol_on_request_finished(record)
