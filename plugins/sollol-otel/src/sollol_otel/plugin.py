"""The ``otel`` entry point: :func:`make_plugin` builds one
:class:`~sollol_otel.tracing.OtelPlugin` per router, configured from the OTEL_* environment
when that router starts.

An application that wants its router's plugin object (to watch a Python API pool's queue, say)
asks the router for it: ``pool.router.plugins.get(OtelPlugin)``.
"""

from __future__ import annotations

from sollol_core.config import Settings
from sollol_otel.tracing import OtelPlugin


def make_plugin(settings: Settings) -> OtelPlugin:
    """The plugin object for one router (its settings come from the OTEL_* environment)."""
    return OtelPlugin()
