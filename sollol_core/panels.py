"""Dashboard panels that plugins add (:func:`~sollol_core.hookspecs.sollol_dashboard_panels`).

A panel is a titled table: the dashboard draws every plugin's panels the same way, so a plugin
adds one without touching the page. Rows may be grouped (a coordinator and the workers it holds)
and may carry a status badge.
"""

from __future__ import annotations

from typing import Literal

from attrs import frozen

#: One cell: text, or a number the page formats.
Cell = str | int | float | None
Status = Literal["", "ok", "busy", "down"]


@frozen
class PanelGroup:
    """Rows that belong together, under a heading with an optional badge."""

    title: str
    rows: tuple[tuple[Cell, ...], ...]
    status: Status = ""
    #: Shown after the title, e.g. a URL.
    detail: str = ""


@frozen
class Panel:
    """A titled table on the dashboard."""

    #: Stable and unique (the page keys its DOM on it), e.g. ``llamacpp-coordinators``.
    key: str
    title: str
    columns: tuple[str, ...]
    groups: tuple[PanelGroup, ...] = ()
    #: Shown when there is no group.
    empty: str = "nothing to show"
