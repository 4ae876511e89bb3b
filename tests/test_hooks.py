"""Each hook, called through the plugin manager with real plugin objects."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import click
import pluggy
import pytest
from aiohttp import web
from attrs import field, frozen
from click.testing import CliRunner
from prometheus_client.core import GaugeMetricFamily, Metric

from sollol_core.config import PluginSettings, Settings, SettingsSection, positive
from sollol_core.errors import ConfigError, PluginError
from sollol_core.gateway.app import create_app
from sollol_core.gateway.common import ROUTER
from sollol_core.hookspecs import hookimpl
from sollol_core.panels import Panel, PanelGroup
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import Recorder, StaticBackend, fleet, node
from sollol_core.types import (
    Decision,
    DeviceTelemetry,
    Endpoint,
    FleetSnapshot,
    InferenceRequest,
    Telemetry,
)

SETTINGS = Settings()


def isolated(*extra: tuple[str, object]) -> Plugins:
    """Built-ins and the given plugins only: installed entry points stay out of these tests."""
    return Plugins.load(PluginSettings(load=()), extra=extra)


class Finder:
    def __init__(self, *addresses: str, fail: bool = False) -> None:
        self.addresses, self.fail = addresses, fail

    @hookimpl
    def sollol_discover(self, settings: Settings) -> Awaitable[Sequence[Endpoint]]:
        async def find() -> Sequence[Endpoint]:
            if self.fail:
                raise ConnectionError("network unreachable")
            return [Endpoint.parse("x", a, source="test") for a in self.addresses]

        return find()


async def test_sollol_discover_joins_plugins_drops_duplicates_and_survives_a_failure() -> None:
    plugins = isolated(("one", Finder("h1:1", "h2:2")), ("two", Finder("h2:2", "h3:3")),
                                  ("broken", Finder(fail=True)))
    found = await plugins.discover(SETTINGS)
    assert sorted(e.address for e in found) == ["h1:1", "h2:2", "h3:3"]


class Prober:
    def __init__(self, kind: str, version: str) -> None:
        self.kind, self.version = kind, version

    @hookimpl
    def sollol_probe(self, endpoint: Endpoint) -> Awaitable[object] | None:
        if endpoint.kind != self.kind:
            return None
        snapshot = node(endpoint.host, kind=endpoint.kind)

        async def probe() -> object:
            from attrs import evolve
            return evolve(snapshot, version=self.version)

        return probe()


async def test_sollol_probe_is_answered_by_the_plugin_that_owns_the_kind() -> None:
    plugins = isolated(("a", Prober("alpha", "A1")), ("b", Prober("beta", "B1")))
    alpha = await plugins.probe(Endpoint("alpha", "h", 1), SETTINGS)
    beta = await plugins.probe(Endpoint("beta", "h", 1), SETTINGS)
    assert alpha is not None and alpha.version == "A1"
    assert beta is not None and beta.version == "B1"
    assert await plugins.probe(Endpoint("gamma", "h", 1), SETTINGS) is None


class Gauge:
    def __init__(self, report: Telemetry | Sequence[Telemetry] | None) -> None:
        self.report = report

    @hookimpl
    def sollol_collect_telemetry(self) -> Awaitable[Telemetry | Sequence[Telemetry] | None]:
        async def measure() -> Telemetry | Sequence[Telemetry] | None:
            return self.report

        return measure()


async def test_sollol_collect_telemetry_merges_reports_of_one_host() -> None:
    now = time.time()
    cpu = Telemetry(host="m1", source="cpu", taken_at=now, cpu_count=8, ram_total_bytes=64)
    gpu = Telemetry(host="m1", source="gpu", taken_at=now,
                    devices=(DeviceTelemetry(0, "GPU 0", memory_total_bytes=24),))
    other = Telemetry(host="m2", source="cpu", taken_at=now, cpu_count=2)
    plugins = isolated(("cpu-gauge", Gauge(cpu)), ("gpu", Gauge(gpu)),
                                  ("remote", Gauge(other)), ("nothing", Gauge(None)))
    reports = {r.host: r for r in await plugins.collect_telemetry(SETTINGS)}
    assert set(reports) == {"m1", "m2"}
    assert reports["m1"].cpu_count == 8
    assert reports["m1"].devices[0].memory_total_bytes == 24
    assert set(reports["m1"].source.split("+")) == {"cpu", "gpu"}


async def test_sollol_collect_telemetry_takes_several_reports_from_one_plugin() -> None:
    now = time.time()
    local = Telemetry(host="m1", source="cpu", taken_at=now, cpu_count=8)
    agents = [Telemetry(host="m1", source="agent", taken_at=now, ram_free_bytes=5),
              Telemetry(host="m2", source="agent", taken_at=now, ram_free_bytes=7)]
    plugins = isolated(("cpu-gauge", Gauge(local)), ("agents", Gauge(agents)),
                       ("none-at-all", Gauge([])))
    reports = {r.host: r for r in await plugins.collect_telemetry(SETTINGS)}
    assert set(reports) == {"m1", "m2"}
    assert (reports["m1"].cpu_count, reports["m1"].ram_free_bytes) == (8, 5)
    assert reports["m2"].ram_free_bytes == 7


class PinPolicy:
    """Sends model m to node 'b'; has no opinion on other models."""

    @hookimpl
    def sollol_place(self, request: InferenceRequest, fleet: FleetSnapshot) -> Decision | None:
        if request.model != "m":
            return None
        target = next(n.endpoint for n in fleet.healthy() if n.endpoint.host == "b")
        return Decision.whole(request, target, policy="pin", reason="m is pinned to b")


def test_sollol_place_default_policy_prefers_the_idle_node() -> None:
    snapshot = fleet(node("a", models=["m"], in_flight=3), node("b", models=["m"]),
                     node("c", models=["other"]))
    decision = isolated().place(InferenceRequest.chat("m", []), snapshot)
    assert decision is not None and decision.target is not None
    assert decision.target.host == "b"
    assert decision.policy == "default"
    assert [c.endpoint.host for c in decision.candidates] == ["b", "a"]


def test_sollol_place_an_installed_policy_wins_and_can_defer() -> None:
    snapshot = fleet(node("a", models=["m", "n"]), node("b", models=["m", "n"], in_flight=3))
    plugins = isolated(("pin", PinPolicy()))
    pinned = plugins.place(InferenceRequest.chat("m", []), snapshot)
    deferred = plugins.place(InferenceRequest.chat("n", []), snapshot)
    assert pinned is not None and pinned.policy == "pin" and pinned.target.host == "b"
    assert deferred is not None and deferred.policy == "default" and deferred.target.host == "a"


def test_sollol_place_refuses_a_model_no_node_holds() -> None:
    decision = isolated().place(InferenceRequest.chat("ghost", []),
                                    fleet(node("a", models=["m"])))
    assert decision is not None and not decision.placed
    assert "ghost" in decision.reason


async def test_sollol_execute_runs_on_the_backend_that_owns_the_target() -> None:
    backend = StaticBackend([node("a", models=["m"])])
    plugins = isolated(("static", backend))
    request = InferenceRequest.generate("m", "hi")
    decision = Decision.whole(request, backend.nodes[0].endpoint, policy="t", reason="t")
    stream = plugins.execute(request, decision, SETTINGS)
    assert stream is not None
    chunks = [c async for c in stream]
    assert chunks[-1]["response"] == "answered by a" and chunks[-1]["done"] is True
    foreign = Decision.whole(request, Endpoint("ollama", "a", 1), policy="t", reason="t")
    assert plugins.execute(request, foreign, SETTINGS) is None


class Explodes:
    """An observer with bugs: one hook raises at once, the other from its awaitable."""

    @hookimpl
    def sollol_on_decision(self) -> None:
        raise RuntimeError("observer bug")

    @hookimpl
    def sollol_on_request_finished(self) -> Awaitable[None]:
        async def fail() -> None:
            raise RuntimeError("exporter down")

        return fail()


async def test_sollol_on_decision_and_on_request_finished_see_every_request() -> None:
    recorder = Recorder()
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(SETTINGS, isolated(("static", backend),
                                                         ("recorder", recorder)))
    await router.fleet.refresh()
    _, routing = await router.run(InferenceRequest.chat("m", []))
    assert routing.node == "a:11434"
    assert [d.target.host for d in recorder.decisions] == ["a"]
    (record,) = recorder.finished
    assert record.ok and record.decision == recorder.decisions[0] and record.chunks == 1


async def test_a_failing_observer_does_not_fail_the_request() -> None:
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(SETTINGS, isolated(("static", backend), ("flaky", Explodes())))
    await router.fleet.refresh()
    chunks, routing = await router.run(InferenceRequest.chat("m", []))
    assert chunks[-1]["message"]["content"] == "answered by a"
    assert routing.node == "a:11434"


class Traces:
    """Returns a header per attempt, as a tracing plugin would; another observer keeps records."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []

    @hookimpl
    def sollol_on_attempt(self, decision: Decision, attempt: int) -> dict[str, str]:
        assert decision.target is not None
        self.started.append((decision.target.host, attempt))
        return {"traceparent": f"00-{attempt:032x}-{attempt:016x}-01"}


async def test_sollol_on_attempt_and_sollol_on_attempt_finished_see_each_fail_over() -> None:
    traces, recorder = Traces(), Recorder()
    backend = StaticBackend([node("a", models=["m"], latency_ms=1.0),
                             node("b", models=["m"], latency_ms=900.0)], fail={"a": 1})
    router = Router.create(SETTINGS, isolated(("static", backend), ("traces", traces),
                                              ("recorder", recorder)))
    await router.fleet.refresh()
    _, routing = await router.run(InferenceRequest.generate("m", "hi", stream=True))
    assert routing.node == "b:11434" and routing.attempts == 2
    assert traces.started == [("a", 1), ("b", 2)]
    ((host, request),) = backend.executed
    assert host == "b"
    assert request.upstream_headers["traceparent"].startswith("00-" + "0" * 31 + "2")
    failed, ran = recorder.attempts
    assert (failed.attempt, failed.ok, failed.error_type) == (1, False, "BackendError")
    assert "a refused" in (failed.error or "")
    assert (ran.attempt, ran.ok, ran.error) == (2, True, None)
    assert ran.first_chunk_ms is not None and ran.duration_ms >= ran.first_chunk_ms


async def test_a_failing_observer_does_not_stop_the_other_observers() -> None:
    recorder = Recorder()
    backend = StaticBackend([node("a", models=["m"])])
    # Registered after the recorder, so pluggy calls it first.
    router = Router.create(SETTINGS, isolated(("static", backend), ("recorder", recorder),
                                              ("flaky", Explodes())))
    await router.fleet.refresh()
    await router.run(InferenceRequest.chat("m", []))
    assert len(recorder.decisions) == 1 and len(recorder.finished) == 1


class Page:
    @hookimpl
    def sollol_gateway_app(self, app: web.Application) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=f"{len(app[ROUTER].fleet.snapshot().nodes)} nodes")

        app.router.add_get("/hello", hello)


async def test_sollol_gateway_app_adds_a_page_behind_the_gateways_authentication(
        aiohttp_client: Any) -> None:
    settings = Settings.load(environ={}, flags={"gateway.api_keys": ["k"]})
    router = Router.create(settings, isolated(("static", StaticBackend([node("a")])),
                                              ("page", Page())))
    client = await aiohttp_client(create_app(router))
    assert (await client.get("/hello")).status == 401
    response = await client.get("/hello", headers={"Authorization": "Bearer k"})
    assert response.status == 200 and await response.text() == "1 nodes"


class AgentPage:
    @hookimpl
    def sollol_agent_app(self, app: web.Application, settings: Settings) -> None:
        async def where(request: web.Request) -> web.Response:
            return web.Response(text=f"reach me at {settings.agent.advertise}")

        app.router.add_get("/v1/where", where)


async def test_sollol_agent_app_adds_a_route_behind_the_agents_token(
        aiohttp_client: Any) -> None:
    from sollol_core.agent.app import create_agent_app

    settings = Settings.load(environ={}, flags={"agent.host": "127.0.0.5"})
    client = await aiohttp_client(create_agent_app(isolated(("page", AgentPage())), settings,
                                                   token="t0ken"))
    assert (await client.get("/v1/where")).status == 401
    response = await client.get("/v1/where", headers={"Authorization": "Bearer t0ken"})
    assert response.status == 200 and await response.text() == "reach me at 127.0.0.5"


class Commands:
    @hookimpl
    def sollol_register_commands(self, cli: click.Group) -> None:
        @cli.command()
        def hello() -> None:
            """Say hello from a plugin."""
            click.echo("hello from a plugin")


def test_sollol_register_commands_adds_a_subcommand() -> None:
    group = click.Group("sollol")
    isolated(("cmds", Commands())).register_commands(group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"


class AsyncPlacement:
    @hookimpl
    async def sollol_place(self) -> None:
        return None


def test_async_firstresult_implementations_are_refused() -> None:
    with pytest.raises(PluginError, match="sollol_place is a firstresult hook"):
        isolated(("bad", AsyncPlacement()))


class Misspelt:
    @hookimpl
    def sollol_plac(self) -> None:
        return None


def test_unknown_sollol_hooks_are_refused_by_check_pending() -> None:
    with pytest.raises(pluggy.PluginValidationError, match="sollol_plac"):
        isolated(("typo", Misspelt()))


class Holder:
    """A plugin holding a resource for the router's lifetime."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    @hookimpl
    def sollol_lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        @contextlib.asynccontextmanager
        async def held() -> AsyncIterator[None]:
            self.log.append(f"open {self.name}")
            try:
                yield
            finally:
                self.log.append(f"close {self.name}")

        return held()


async def test_sollol_lifespan_spans_the_router_and_closes_in_reverse_order() -> None:
    log: list[str] = []
    router = Router.create(SETTINGS, isolated(("first", Holder(log, "first")),
                                              ("second", Holder(log, "second"))))
    await router.start()
    assert sorted(log) == ["open first", "open second"]
    opened = list(log)
    await router.stop()
    assert log[2:] == [f"close {entry.split()[1]}" for entry in reversed(opened)]



class Reporter:
    def __init__(self, section: dict[str, object] | None, fail: bool = False) -> None:
        self.section, self.fail = section, fail

    @hookimpl
    def sollol_status(self) -> dict[str, object] | None:
        if self.fail:
            raise RuntimeError("status bug")
        return self.section


def test_sollol_status_merges_every_plugins_sections() -> None:
    plugins = isolated(("a", Reporter({"coordinators": [{"model": "m"}]})),
                       ("b", Reporter({"queues": 2})), ("c", Reporter(None)))
    assert plugins.status() == {"coordinators": [{"model": "m"}], "queues": 2}
    assert isolated(("broken", Reporter(None, fail=True))).status() == {}


@frozen
class QueueSettings:
    depth: int = field(default=4, validator=positive)


class Queues:
    """A stateful plugin object with settings, facts, metrics and a panel."""

    def __init__(self, settings: Settings) -> None:
        self.depth = settings.section(QueueSettings).depth
        self.facts = PinFacts(host="b")

    @staticmethod
    @hookimpl
    def sollol_settings_sections() -> SettingsSection:
        return SettingsSection("queues", QueueSettings, environment={"QUEUES_DEPTH": "depth"})

    @hookimpl
    def sollol_fleet_facts(self) -> PinFacts:
        return self.facts

    @hookimpl
    def sollol_metrics(self) -> list[Metric]:
        gauge = GaugeMetricFamily("queues_depth", "Configured depth.")
        gauge.add_metric([], self.depth)
        return [gauge]

    @hookimpl
    def sollol_dashboard_panels(self) -> Panel:
        return Panel("queues", "Queues", ("queue", "depth"),
                     (PanelGroup("all", (("default", self.depth),), status="ok"),))


@frozen
class PinFacts:
    host: str


class FactPolicy:
    @hookimpl
    def sollol_place(self, request: InferenceRequest, fleet: FleetSnapshot,
                     settings: Settings) -> Decision | None:
        facts = fleet.fact(PinFacts)
        if facts is None:
            return None
        target = next(n for n in fleet.nodes if n.endpoint.host == facts.host)
        return Decision.whole(request, target.endpoint, policy="facts",
                              reason=f"learnt: {facts.host}, "
                                     f"depth {settings.section(QueueSettings).depth}")


def test_sollol_settings_sections_are_read_with_the_cores_rules_and_reach_the_object() -> None:
    sections = isolated(("queues", Queues)).settings_sections()
    assert [s.name for s in sections] == ["queues"]
    settings = Settings.load(environ={"QUEUES_DEPTH": "9"}, sections=sections)
    assert settings.section(QueueSettings).depth == 9
    plugins = Plugins.load(settings.with_sections(QueueSettings(depth=9)),
                           extra=[("queues", Queues)])
    queues = plugins.get(Queues)
    assert queues is not None and queues.depth == 9  # built from the router's settings
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={"QUEUES_DEPTH": "0"}, sections=sections)
    assert caught.value.lines == ("QUEUES_DEPTH: queues.depth: expected a number above 0, "
                                  "got 0",)


def test_sollol_fleet_facts_reach_placement_through_the_snapshot() -> None:
    plugins = isolated(("queues", Queues), ("facts", FactPolicy()))
    settings = Settings().with_sections(QueueSettings(depth=3))
    router = Router.create(settings, plugins)
    router.fleet.record(node("a", models=["m"]))
    router.fleet.record(node("b", models=["m"]))
    decision = router.decide(InferenceRequest.chat("m", []))
    assert decision.policy == "facts" and decision.target is not None
    assert decision.target.host == "b" and decision.reason == "learnt: b, depth 3"


def test_sollol_metrics_and_sollol_dashboard_panels_come_from_each_plugin() -> None:
    plugins = isolated(("queues", Queues))
    (gauge,) = plugins.metrics()
    assert gauge.name == "queues_depth" and gauge.samples[0].value == 4
    (panel,) = plugins.dashboard_panels()
    assert panel.title == "Queues" and panel.groups[0].rows == (("default", 4),)
