"""A third-party backend, as someone outside the project would write it: its own settings
section, nodes, execution, a metric and a dashboard panel, using only the core's public API.
``test_third_party_backend.py`` installs it as a distribution on disk."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence

from attrs import field, frozen
from prometheus_client.core import GaugeMetricFamily, Metric

from sollol_core.config import Flag, Settings, SettingsSection, one_of, positive
from sollol_core.hookspecs import Chunk, hookimpl
from sollol_core.panels import Panel, PanelGroup
from sollol_core.types import Decision, Endpoint, Health, InferenceRequest, ModelInfo, NodeSnapshot

KIND = "mybackend"


@frozen
class MyBackendSettings:
    greeting: str = "hello"
    slots: int = field(default=2, validator=positive)
    mood: str = field(default="calm", validator=one_of("calm", "cheerful"))


class MyBackend:
    """One object per router, built from that router's settings."""

    def __init__(self, settings: Settings) -> None:
        self.options = settings.section(MyBackendSettings)
        self.served = 0

    @staticmethod
    @hookimpl
    def sollol_settings_sections() -> SettingsSection:
        return SettingsSection("mybackend", MyBackendSettings,
                               environment={"MYBACKEND_SLOTS": "slots"},
                               flags=(Flag("--my-mood", "mood", "How the node answers."),))

    @hookimpl
    def sollol_discover(self) -> Awaitable[Sequence[Endpoint]]:
        async def found() -> Sequence[Endpoint]:
            return [Endpoint.parse(KIND, "127.0.0.1:1", source="mybackend")]

        return found()

    @hookimpl
    def sollol_probe(self, endpoint: Endpoint) -> Awaitable[NodeSnapshot] | None:
        if endpoint.kind != KIND:
            return None

        async def probe() -> NodeSnapshot:
            return NodeSnapshot(endpoint=endpoint, health=Health.UP, taken_at=time.time(),
                                models=(ModelInfo("echo"),), parallel=self.options.slots)

        return probe()

    @hookimpl
    def sollol_execute(self, request: InferenceRequest,
                       decision: Decision) -> AsyncIterator[Chunk] | None:
        if decision.target is None or decision.target.kind != KIND:
            return None
        return self._answer(request)

    async def _answer(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        self.served += 1
        text = f"{self.options.greeting} ({self.options.mood})"
        yield {"model": request.model, "response": text, "done": True, "done_reason": "stop"}

    @hookimpl
    def sollol_metrics(self) -> list[Metric]:
        slots = GaugeMetricFamily("mybackend_slots", "Slots of the node.")
        slots.add_metric([], self.options.slots)
        served = GaugeMetricFamily("mybackend_served", "Requests answered.")
        served.add_metric([], self.served)
        return [slots, served]

    @hookimpl
    def sollol_dashboard_panels(self) -> Panel:
        return Panel("mybackend", "My backend", ("greeting", "slots", "served"),
                     (PanelGroup("127.0.0.1:1", ((self.options.greeting, self.options.slots,
                                                  self.served),), status="ok"),))
