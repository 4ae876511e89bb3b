"""Value types: the parts with behaviour of their own."""

from __future__ import annotations

import pytest
from attrs import evolve, fields

from sollol_core.testing import node
from sollol_core.types import (
    DeviceTelemetry,
    Endpoint,
    FleetSnapshot,
    Telemetry,
    same_model,
    split_host_port,
)


def test_with_in_flight_changes_only_the_count() -> None:
    snapshot = node("a", models=["m"], loaded=["m"], in_flight=1)
    assert snapshot.with_in_flight(3) == evolve(snapshot, in_flight=3)
    # every field is carried over: a field added to NodeSnapshot must be added there too
    assert {f.name for f in fields(type(snapshot))} == {
        "endpoint", "health", "taken_at", "role", "latency_ms", "version", "detail", "devices",
        "models", "in_flight", "parallel", "slots_source"}



@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1:50052", ("10.0.0.1", 50052)),
    ("http://gpu:11434/", ("gpu", 11434)),
    ("[::1]:8080", ("::1", 8080)),
    ("gpu", ("gpu", 11434)),
])
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 11434) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("gpu:port", "the port is not a number"),
    ("gpu:70000", "outside 1-65535"),
    ("gpu", "no port"),
])
def test_split_host_port_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_host_port(text)


def test_endpoint_identity_ignores_where_it_was_found() -> None:
    a = Endpoint.parse("ollama", "[::1]:11434", source="config")
    b = Endpoint.parse("ollama", "::1", default_port=11434, source="network")
    assert a.key == b.key == "ollama://[::1]:11434"


def test_model_names_follow_ollamas_default_tag() -> None:
    assert same_model("llama3.2", "llama3.2:latest")
    assert same_model("alice/tiny", "alice/tiny:latest")
    assert not same_model("llama3.2:1b", "llama3.2")
    assert node("a", models=["myreg:5000/ns/m"]).holds("myreg:5000/ns/m:latest")


def test_free_memory_of_a_node_comes_from_its_probe_else_its_machines_telemetry() -> None:
    gib = 2**30
    probed = node("gpu-box", free_gib=6.0)
    agent_gpu = evolve(node("10.0.0.7", free_gib=0), devices=())
    local = evolve(node("127.0.0.1", free_gib=0), devices=())
    unmeasured = evolve(node("10.0.0.9", free_gib=0), devices=())
    snapshot = FleetSnapshot(
        nodes=(probed, agent_gpu, local, unmeasured), local_host="this-box",
        telemetry=(
            Telemetry(host="10.0.0.7", source="agent", taken_at=0.0, ram_free_bytes=64 * gib,
                      devices=(DeviceTelemetry(0, "A", memory_free_bytes=20 * gib),
                               DeviceTelemetry(1, "B", memory_free_bytes=4 * gib))),
            Telemetry(host="this-box", source="cpu", taken_at=0.0, ram_free_bytes=3 * gib),
        ))
    assert snapshot.free_bytes_of(probed) == 6 * gib
    assert snapshot.free_bytes_of(agent_gpu) == 24 * gib  # GPUs, not the host's RAM
    assert snapshot.free_bytes_of(local) == 3 * gib  # loopback node: this machine's RAM
    assert snapshot.free_bytes_of(unmeasured) is None
