"""The guide's "Usage Examples", and the blocks that continue a reader's session after
Example 1 (they use its ``router``): each prints what the guide says it prints."""

from __future__ import annotations

import psutil

from .conftest import Reader, Step

SHARDED = r"Backend: llama\.cpp-distributed"


def test_a_readers_session_from_example_1_to_the_metrics(
        reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    session = reader.run(
        Step("guide_10_example_1_basic_model_sharding.py"),
        Step("guide_11_example_2_check_model_routing_decision.py"),
        Step("guide_12_example_3_monitor_coordinator_status.py",
             then="first_coordinator = router.coordinator.pid\n"),
        Step("guide_16_custom_model_profiles.py",
             then="print(f'added: {router.coordinator_model}')\n"),
        Step("guide_20_optimization_tips.py",
             then="print(f\"limited: {response['_routing']['backend']} \"\n"
                  "      f\"{response['eval_count'] <= 512}\")\n"),
        Step("guide_21_optimization_tips.py",
             then="reused = router.coordinator.pid\n"
                  "print(f\"reused: {response1['_routing']['backend']} \"\n"
                  "      f\"{response2['_routing']['backend']}\")\n"),
        Step("guide_22_optimization_tips.py",
             then="print(f'same coordinator: {router.coordinator.pid == reused}')\n"),
        Step("guide_29_issue_inference_timeout.py",
             then="print(f\"answer: {response['message']['content']!r}\")\n"),
        Step("guide_41_monitoring_metrics.py"),
        environ=rpc_backends_exported)
    session.expect(
        r"Running small model\.\.\.", "Backend: ollama-pool", "",
        r"Running large model\.\.\.", SHARDED,
        # Example 2
        r"llama3\.1:70b will use distributed inference \(llama\.cpp\)",
        "Expected: Slower startup, network overhead",
        # Example 3
        "Coordinator running: True", r"Coordinator model: llama3\.1:70b", "RPC backends: 3",
        r"Coordinator URL: http://127\.0\.0\.1:\d+",
        # Custom Model Profiles: "SOLLOL will route it to llama.cpp automatically"
        "added: custom-70b",
        "limited: llama.cpp-distributed True",
        "reused: llama.cpp-distributed llama.cpp-distributed",
        # Monitor Performance
        SHARDED, r"Duration: \d+(\.\d+)?ms", r"Coordinator: http://127\.0\.0\.1:\d+",
        "same coordinator: True",
        r"answer: '.+'",
        # Monitoring & Metrics: ex. 1, custom-70b, max_tokens, reuse (2), metadata, timeout
        "Distributed requests: 7", r"Coordinator uptime: \d+(\.\d+)?s",
        "Active RPC backends: 3")


def test_what_you_get(reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    session = reader.run(
        Step("guide_01_what_you_get.py",
             then="stats = router.get_stats()\n"
                  "print(stats['requests'], stats['distributed_requests'])\n"
                  "print(response['_routing']['backend'], response['_routing']['node'])\n"),
        environ=rpc_backends_exported)
    # two requests, one sharded: the other ran on the Ollama node
    session.expect("2 1", r"llama\.cpp-distributed sharded:(127\.0\.0\.1[012]:50052,?){3}")


def test_example_4_async_usage_answers_and_leaves_nothing_running(
        reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    """The async example never closes its router; its coordinator still ends with it."""
    session = reader.run(Step("guide_13_example_4_async_usage.py"),
                         environ=rpc_backends_exported)
    assert session.stdout.strip(), session.stderr
    assert "Traceback" not in session.stderr, session.stderr


def test_example_5_multi_agent_with_mixed_models(
        reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    session = reader.run(Step("guide_14_example_5_multi_agent_with_mixed_models.py"),
                         environ=rpc_backends_exported)
    session.expect(r"Researcher \(llama3\.1:70b\): llama\.cpp-distributed",
                   r"Editor \(llama3\.2\): ollama-pool",
                   r"Summarizer \(llama3\.2\): ollama-pool")


def test_the_llama_cpp_processes_of_the_fleet_are_the_guides_own(
        rpc_backends_exported: dict[str, str]) -> None:
    """The RPC servers these tests use are the ones the guide's step 2 started, as written."""
    lines = [" ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"])]
    for host in ("127.0.0.10", "127.0.0.11", "127.0.0.12"):
        assert any(line.endswith(f"rpc-server -H {host} -p 50052") for line in lines)
