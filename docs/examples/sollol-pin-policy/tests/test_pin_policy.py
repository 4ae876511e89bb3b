"""The pin policy, loaded as an installed distribution through its ``sollol`` entry point, and
routing real requests through a Router over a StaticBackend fleet."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sollol_pin_policy import parse_pins, pins_from_environment, place

from sollol_core.config import PluginSettings, Settings
from sollol_core.errors import BackendError, NoRouteError
from sollol_core.plugins import Plugins, environment_variables
from sollol_core.router import Router, Routing
from sollol_core.testing import Recorder, StaticBackend, fleet, node
from sollol_core.types import Health, InferenceRequest, NodeSnapshot, Role

HELLO: list[Mapping[str, Any]] = [{"role": "user", "content": "Hello"}]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the settings a test sets itself."""
    for name in [*environment_variables(), "SOLLOL_CONFIG", "SOLLOL_PINS"]:
        monkeypatch.delenv(name, raising=False)


def load(backend: StaticBackend, recorder: Recorder | None = None, *,
         disable: Sequence[str] = ()) -> Plugins:
    """The built-in policy, the installed ``pin`` entry point (and no other) and a fleet."""
    extra: list[tuple[str, object]] = [("static", backend)]
    if recorder is not None:
        extra.append(("recorder", recorder))
    return Plugins.load(PluginSettings(load=("pin",), disable=tuple(disable)), extra=extra)


async def ask(backend: StaticBackend, model: str = "llama3.2", *,
              disable: Sequence[str] = (),
              recorder: Recorder | None = None) -> tuple[str, Routing]:
    """Run one chat through a Router; the answer names the node that ran it."""
    router = Router.create(Settings(), load(backend, recorder, disable=disable))
    await router.fleet.refresh()
    chunks, routing = await router.run(InferenceRequest.chat(model, HELLO))
    return chunks[-1]["message"]["content"], routing


def busy_fleet(*extra: NodeSnapshot) -> StaticBackend:
    """gpu-a and gpu-b hold llama3.2 and are busy; idle holds it too and does nothing."""
    return StaticBackend([node("gpu-a", models=["llama3.2"], in_flight=1),
                          node("gpu-b", models=["llama3.2"], in_flight=3),
                          node("idle", models=["llama3.2", "qwen3:8b"]), *extra])


def test_the_distribution_is_installed_and_loads_as_plugin_pin() -> None:
    plugins = load(StaticBackend([]))
    (info,) = [i for i in plugins.infos if i.name == "pin"]
    assert (info.state, info.distribution, info.hooks) == \
        ("enabled", "sollol-pin-policy", ("sollol_place",))


async def test_a_pinned_model_runs_on_its_node_even_when_another_is_idler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-b")
    answer, routing = await ask(busy_fleet())
    assert answer == "answered by gpu-b"
    assert (routing.policy, routing.node) == ("pin", "gpu-b:11434")
    assert routing.reason == "llama3.2 is pinned to gpu-b; chose gpu-b (3/4 busy)"


async def test_among_several_pinned_nodes_the_one_with_most_spare_slots_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-b|gpu-a")
    recorder = Recorder()
    answer, routing = await ask(busy_fleet(), recorder=recorder)
    assert answer == "answered by gpu-a"
    assert routing.reason == "llama3.2 is pinned to gpu-b, gpu-a; chose gpu-a (1/4 busy)"
    (decision,) = recorder.decisions
    assert [(c.endpoint.host, c.score, c.note) for c in decision.candidates] == [
        ("gpu-a", 3.0, "gpu-a: 1/4 busy"), ("gpu-b", 1.0, "gpu-b: 3/4 busy")]


async def test_spare_capacity_counts_slots_not_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu-b is busier (4/8) than gpu-a (1/2) but has 4 free slots to gpu-a's 1."""
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-a|gpu-b")
    backend = StaticBackend([node("gpu-a", models=["llama3.2"], in_flight=1, parallel=2),
                             node("gpu-b", models=["llama3.2"], in_flight=4, parallel=8)])
    answer, routing = await ask(backend)
    assert answer == "answered by gpu-b"
    assert routing.reason.endswith("chose gpu-b (4/8 busy)")


async def test_nodes_match_by_host_address_or_key_and_model_tags_are_normalised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2:latest=gpu-a:11434;qwen3:8b=static://gpu-b:11434")
    backend = busy_fleet()
    assert (await ask(backend, "llama3.2"))[0] == "answered by gpu-a"
    backend.nodes = [*backend.nodes[:2], node("idle", models=["qwen3:8b"])]
    answer, routing = await ask(backend, "qwen3:8b")
    assert answer == "answered by gpu-b"
    assert routing.reason == ("qwen3:8b is pinned to static://gpu-b:11434; "
                              "chose static://gpu-b:11434 (3/4 busy)")


async def test_an_unpinned_model_is_left_to_the_default_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-a")
    answer, routing = await ask(busy_fleet(), "qwen3:8b")
    assert answer == "answered by idle"
    assert routing.policy == "default"


async def test_when_every_pinned_node_is_down_the_request_is_refused_not_moved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-a|gpu-b|gpu-z")
    backend = StaticBackend([
        node("gpu-a", models=["llama3.2"], health=Health.DOWN),
        node("gpu-b", models=["llama3.2"], role=Role.WORKER),
        node("idle", models=["llama3.2"])])
    recorder = Recorder()
    with pytest.raises(NoRouteError) as refused:
        await ask(backend, recorder=recorder)
    assert str(refused.value) == (
        "llama3.2 is pinned to gpu-a, gpu-b, gpu-z and none of them is healthy "
        "(gpu-a: down; gpu-b: worker, not a node; gpu-z: not in the fleet)")
    assert backend.executed == []
    (decision,) = recorder.decisions
    assert (decision.policy, decision.placed) == ("pin", False)
    assert [c.endpoint.host for c in decision.candidates] == ["gpu-a", "gpu-b"]


async def test_fail_over_stays_among_the_pinned_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-a|gpu-b")
    backend = busy_fleet()
    backend.fail = {"gpu-a": 1}
    answer, routing = await ask(backend)
    assert (answer, routing.attempts) == ("answered by gpu-b", 2)

    backend = busy_fleet()
    backend.fail = {"gpu-a": 1, "gpu-b": 1}
    with pytest.raises(BackendError) as failed:
        await ask(backend)
    assert str(failed.value) == (
        "llama3.2 is pinned to gpu-a, gpu-b and none of them is healthy "
        "(gpu-a: not in the fleet; gpu-b: not in the fleet); "
        "earlier attempts: static://gpu-a:11434: gpu-a refused the request; "
        "static://gpu-b:11434: gpu-b refused the request")
    assert backend.executed == []


@pytest.mark.parametrize(("value", "problem"), [
    ("llama3.2", "entry 1 'llama3.2' has no '='"),
    ("llama3.2=gpu-a;qwen3:8b", "entry 2 'qwen3:8b' has no '='"),
    ("llama3.2=gpu-a=gpu-b", "entry 1 'llama3.2=gpu-a=gpu-b' has more than one '='"),
    ("llama3.2=", "entry 1 has an empty node name"),
    ("=gpu-a", "entry 1 has an empty model"),
    ("llama3.2=gpu-a||gpu-b", "entry 1 has an empty node name"),
    ("llama3.2=gpu-a;;qwen3:8b=gpu-b", "entry 2 is empty"),
    ("llama3.2=gpu-a;", "entry 2 is empty"),
    ("llama 3.2=gpu-a", "entry 1: model 'llama 3.2' contains whitespace"),
    ("llama3.2=gpu-a|gpu-a", "entry 1 names node 'gpu-a' twice"),
    ("llama3.2=gpu-a;llama3.2:latest=gpu-b",
     "model 'llama3.2:latest' is pinned twice (entry 1 'llama3.2' and entry 2)"),
])
async def test_a_malformed_value_fails_the_request_with_a_message_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("SOLLOL_PINS", value)
    expected = (f"SOLLOL_PINS: {problem}; expected model=node[|node...] separated by ';', "
                "e.g. 'llama3.2=gpu-a|gpu-b;qwen3:8b=10.0.0.7:11434'")
    recorder = Recorder()
    with pytest.raises(ValueError) as failed:
        await ask(busy_fleet(), "qwen3:8b", recorder=recorder)  # even for an unpinned model
    assert str(failed.value) == expected
    (record,) = recorder.finished
    assert (record.ok, record.error) == (False, expected)


def test_the_value_is_parsed_leniently_only_about_spaces_and_emptiness() -> None:
    assert pins_from_environment({}) == {}
    assert pins_from_environment({"SOLLOL_PINS": "  "}) == {}
    assert dict(parse_pins(" llama3.2 = gpu-a | gpu-b ; qwen3:8b=10.0.0.7:11434 ")) == {
        "llama3.2:latest": ("gpu-a", "gpu-b"), "qwen3:8b": ("10.0.0.7:11434",)}


def test_importing_the_plugin_reads_nothing() -> None:
    imported = subprocess.run([sys.executable, "-c", "import sollol_pin_policy"],
                              env={"SOLLOL_PINS": "malformed"}, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr


async def test_the_variable_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router.create(Settings(), load(busy_fleet()))
    await router.fleet.refresh()
    request = InferenceRequest.chat("llama3.2", HELLO)
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-b")
    assert router.decide(request).backend == "static://gpu-b:11434"
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-a")
    assert router.decide(request).backend == "static://gpu-a:11434"
    monkeypatch.delenv("SOLLOL_PINS")
    assert router.decide(request).policy == "default"


async def test_disabling_the_plugin_by_name_restores_the_default_decision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_PINS", "llama3.2=gpu-b")
    assert (await ask(busy_fleet()))[0] == "answered by gpu-b"
    answer, routing = await ask(busy_fleet(), disable=["pin"])
    assert (answer, routing.policy) == ("answered by idle", "default")
    plugins = load(busy_fleet(), disable=["pin"])
    assert [i.state for i in plugins.infos if i.name == "pin"] == ["blocked"]


def test_place_is_a_pure_function_of_request_fleet_and_pins() -> None:
    snapshot = fleet(node("gpu-a", models=["m"], in_flight=2), node("gpu-b", models=["m"]))
    request = InferenceRequest.chat("m", HELLO)
    assert place(request, snapshot, {}) is None
    decision = place(request, snapshot, parse_pins("m=gpu-a|gpu-b"))
    assert decision is not None
    assert (decision.policy, decision.backend) == ("pin", "static://gpu-b:11434")
    assert decision.reason == "m is pinned to gpu-a, gpu-b; chose gpu-b (0/4 busy)"
