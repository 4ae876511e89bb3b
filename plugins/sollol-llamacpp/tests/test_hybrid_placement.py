"""The hybrid decision: whole on a node whose measured free memory holds the model, else sharded
over RPC workers; through the real plugin manager (llamacpp policy, then the built-in one), with
what the llama.cpp plugin learnt given to placement in the fleet snapshot (no plugin state)."""

from __future__ import annotations

import pytest
from attrs import define, evolve
from sollol_llamacpp.estimate import footprint_from_profile
from sollol_llamacpp.facts import ShardingFacts
from sollol_llamacpp.settings import LlamacppSettings
from sollol_llamacpp.workers import KIND as RPC_KIND

from sollol_core.config import PluginSettings, Settings
from sollol_core.plugins import Plugins
from sollol_core.testing import node
from sollol_core.types import (
    Decision,
    DeviceTelemetry,
    FleetSnapshot,
    InferenceRequest,
    NodeSnapshot,
    Role,
    Telemetry,
    model_key,
)

GIB = 2**30
MODEL = "llama3.1:8b"


@define
class Policy:
    """The placement policies of one router, its settings, and the llama.cpp facts its fleet
    snapshots carry."""

    plugins: Plugins
    settings: Settings
    facts: ShardingFacts

    @property
    def options(self) -> LlamacppSettings:
        return self.settings.section(LlamacppSettings)


@pytest.fixture
def policy() -> Policy:
    """The llamacpp policy with Llama 3.1 8B's footprint known, as if read from its GGUF."""
    return Policy(plugins=Plugins.load(PluginSettings(load=("llamacpp",))),
                  settings=Settings.load(environ={}),
                  facts=ShardingFacts(footprints={model_key(MODEL): footprint_from_profile(MODEL)}))


def needs_whole(policy: Policy) -> float:
    options = policy.options
    return footprint_from_profile(MODEL).total_bytes(options.context_size, options.parallel) / GIB


def ollama_node(host: str, *, loaded: bool = False) -> NodeSnapshot:
    """An Ollama node that has the model on disk; its probe measures no memory."""
    return evolve(node(host, models=[MODEL], loaded=[MODEL] if loaded else []), devices=())


def workers(count: int = 3, free_gib: float = 8.0) -> tuple[NodeSnapshot, ...]:
    return tuple(node(f"10.0.1.{i}", role=Role.WORKER, models=[MODEL], free_gib=free_gib,
                      kind=RPC_KIND, port=50052) for i in range(count))


def gpu_box(host: str, free_gib: float) -> Telemetry:
    """What an agent on ``host`` reports: one GPU with ``free_gib`` free."""
    return Telemetry(host=host, source="agent", taken_at=0.0, ram_free_bytes=64 * GIB,
                     devices=(DeviceTelemetry(0, "GPU", memory_total_bytes=24 * GIB,
                                              memory_free_bytes=int(free_gib * GIB)),))


def place(policy: Policy, fleet: FleetSnapshot, *, embed: bool = False) -> Decision:
    request = (InferenceRequest.embed(MODEL, "x") if embed
               else InferenceRequest.chat(MODEL, [{"role": "user", "content": "hi"}]))
    fleet = evolve(fleet, facts={**fleet.facts, ShardingFacts: policy.facts})
    decision = policy.plugins.place(request, fleet, policy.settings)
    assert decision is not None
    return decision


def test_a_node_with_enough_measured_free_memory_runs_the_model_whole(policy: Policy) -> None:
    fleet = FleetSnapshot(nodes=(ollama_node("10.0.0.5"), *workers()),
                          telemetry=(gpu_box("10.0.0.5", needs_whole(policy) * 1.2),))
    decision = place(policy, fleet)
    assert decision.target is not None and decision.target.host == "10.0.0.5"
    assert decision.policy == "default"


def test_too_little_free_memory_on_every_holder_shards_with_the_numbers(policy: Policy) -> None:
    fleet = FleetSnapshot(nodes=(ollama_node("10.0.0.5"), ollama_node("10.0.0.6"), *workers()),
                          telemetry=(gpu_box("10.0.0.5", 3.5), gpu_box("10.0.0.6", 2.0)))
    decision = place(policy, fleet)
    assert decision.plan is not None and len(decision.plan.workers) >= 2
    assert decision.policy == "llamacpp-shard"
    assert f"needs {needs_whole(policy):.2f} GiB (+10% margin) whole" in decision.reason
    assert "largest node holding it has 3.50 GiB free" in decision.reason
    assert f"sharded over {len(decision.plan.workers)} RPC workers (memory_aware" in decision.reason
    # the coordinator it needs may take its whole start-up limit before the first token
    assert decision.startup_s == policy.options.coordinator_timeout_s == 120.0


def test_the_safety_margin_counts(policy: Policy) -> None:
    just_enough = FleetSnapshot(nodes=(ollama_node("10.0.0.5"), *workers()),
                                telemetry=(gpu_box("10.0.0.5", needs_whole(policy) * 1.05),))
    assert place(policy, just_enough).plan is not None  # fits, but not with 10 % to spare
    policy.settings = policy.settings.with_sections(evolve(policy.options, memory_margin=0.0))
    assert place(policy, just_enough).target is not None


def test_distributed_threshold_params_counts_billions_as_the_guide_writes_it(
        policy: Policy) -> None:
    fleet = FleetSnapshot(nodes=(ollama_node("10.0.0.5"), *workers()))  # it fits the node
    policy.settings = policy.settings.with_sections(
        evolve(policy.options, distributed_threshold_params=30))
    assert place(policy, fleet).target is not None  # an 8B model is under 30B: whole
    policy.settings = policy.settings.with_sections(
        evolve(policy.options, distributed_threshold_params=5))
    decision = place(policy, fleet)
    assert decision.plan is not None
    assert "B parameters is over the distributed_threshold_params of 5B" in decision.reason


def test_a_node_with_the_model_loaded_or_unmeasured_memory_keeps_it_whole(
        policy: Policy) -> None:
    loaded = FleetSnapshot(nodes=(ollama_node("10.0.0.5", loaded=True), *workers()),
                           telemetry=(gpu_box("10.0.0.5", 0.5),))
    assert place(policy, loaded).target is not None
    unmeasured = FleetSnapshot(nodes=(ollama_node("10.0.0.7"), *workers()))
    assert place(policy, unmeasured).target is not None


def test_embeddings_stay_on_whole_model_nodes(policy: Policy) -> None:
    fleet = FleetSnapshot(nodes=(ollama_node("10.0.0.5"), *workers()),
                          telemetry=(gpu_box("10.0.0.5", 1.0),))
    assert place(policy, fleet, embed=True).target is not None


def test_too_little_memory_everywhere_is_refused_saying_how_much_is_missing(
        policy: Policy) -> None:
    fleet = FleetSnapshot(nodes=(ollama_node("10.0.0.5"), *workers(2, free_gib=1.0)),
                          telemetry=(gpu_box("10.0.0.5", 1.0),))
    decision = place(policy, fleet)
    assert not decision.placed
    assert "largest node holding it has 1.00 GiB free, but" in decision.reason
    assert "GiB" in decision.reason.split(", but", 1)[1]


def test_an_unreadable_gguf_is_refused_with_the_reason(policy: Policy) -> None:
    policy.facts = ShardingFacts(
        unreadable={model_key(MODEL): "cannot read /m.gguf: not a GGUF file"})
    decision = place(policy, FleetSnapshot(nodes=workers()))
    assert not decision.placed
    assert decision.reason == ("no healthy node holds it whole, but "
                               "cannot read /m.gguf: not a GGUF file")


def test_placement_is_a_pure_function_of_the_request_fleet_options_and_facts(
        policy: Policy) -> None:
    from sollol_llamacpp.placement import place as place_pure

    request = InferenceRequest.chat(MODEL, [{"role": "user", "content": "hi"}])
    fleet = FleetSnapshot(nodes=workers())
    aware = place_pure(request, fleet, policy.options, policy.facts)
    even = place_pure(request, fleet, evolve(policy.options, layer_strategy="even"),
                      policy.facts)
    assert aware is not None and "RPC workers (memory_aware, layers " in aware.reason
    assert even is not None and "RPC workers (even, layers " in even.reason
    again = place_pure(request, fleet, policy.options, policy.facts)  # nothing was kept
    assert again is not None and (again.plan, again.reason) == (aware.plan, aware.reason)
    unknown = place_pure(request, fleet, policy.options, ShardingFacts())
    assert unknown is not None and not unknown.placed
    assert unknown.reason.endswith("but its GGUF has not been read yet")


def test_an_idle_coordinator_of_another_model_gives_its_workers_up(policy: Policy) -> None:
    """As Ollama unloads an idle model to load another: the workers held by another model's
    idle coordinator are planned over, and the reason says whose coordinator goes; one that is
    answering keeps them, and the request is refused saying why."""
    fleet = FleetSnapshot(nodes=workers(2))
    held = frozenset(w.endpoint.key for w in fleet.nodes)
    idle = evolve(policy, facts=evolve(policy.facts, held={"other:7b": held}))
    decision = place(idle, fleet)
    assert decision.plan is not None and {w.key for w in decision.plan.workers} == held
    assert decision.reason.endswith("replacing the idle coordinator of other:7b")
    busy = evolve(idle, facts=evolve(idle.facts, busy=frozenset({"other:7b"})))
    refused = place(busy, fleet)
    assert refused.plan is None and not refused.placed
    assert "0 free workers" in refused.reason


def test_its_own_coordinator_keeps_its_workers_before_a_probe_sees_them_busy(
        policy: Policy) -> None:
    """A coordinator just started holds workers that the last probe still saw free (not
    "loaded"): the next request reuses it rather than planning a new split."""
    fleet = FleetSnapshot(nodes=workers(3))
    mine = frozenset(w.endpoint.key for w in fleet.nodes[:2])
    holding = evolve(policy, facts=evolve(policy.facts, held={model_key(MODEL): mine}))
    decision = place(holding, fleet)
    assert decision.plan is not None and {w.key for w in decision.plan.workers} == mine
    assert "reusing its coordinator on 2 RPC workers" in decision.reason
