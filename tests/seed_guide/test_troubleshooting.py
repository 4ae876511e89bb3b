"""The guide's "Troubleshooting": the logs, the coordinator's health, the GGUF resolver and the
GPU layers variable are where the guide points."""

from __future__ import annotations

import re

from .conftest import Reader, Step


def test_the_resolver_finds_the_gguf_in_the_ollama_store(reader: Reader) -> None:
    session = reader.run(Step("guide_28_issue_coordinator_startup_timeout.py"))
    session.expect(f"GGUF: {re.escape(str(reader.store))}/blobs/sha256-[0-9a-f]{{64}}")


def test_logs_health_and_gpu_layers_of_a_running_coordinator(
        reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    """With ``export LLAMA_ARG_N_GPU_LAYERS=40`` done first, Example 1 runs; while its
    coordinator runs, the guide's ``tail -f`` and ``curl .../health`` reach it."""
    tail = reader.text("guide_27_issue_coordinator_startup_timeout.sh")
    curl = reader.text("guide_30_issue_inference_timeout.sh")
    session = reader.run(
        Step("guide_10_example_1_basic_model_sharding.py", then=(
            "import subprocess, psutil\n"
            "argv = psutil.Process(router.coordinator.pid).cmdline()\n"
            "print(f\"-ngl {argv[argv.index('-ngl') + 1]}\")\n"
            f"tail = {tail!r}\n"
            # The coordinator keeps logging (the supervisor's health checks), so the line to
            # look for is read before tail starts: tail shows it among the last ten.
            "log_path = str(router.coordinator.log_path)\n"
            "last = open(log_path).read().splitlines()[-1]\n"
            "shown = subprocess.run(['timeout', '2', 'bash', '-c', tail], capture_output=True,\n"
            "                       text=True).stdout\n"
            "ours = f'==> {log_path} <==' in shown or '==> ' not in shown\n"
            "print(f'log of this coordinator: {last in shown and ours}')\n"
            f"curl = {curl!r}.replace('localhost:18080',\n"
            "                         router.coordinator.base_url.removeprefix('http://'))\n"
            "print(subprocess.run(['bash', '-c', curl], capture_output=True, text=True).stdout)\n"
        )),
        shell_first="guide_33_issue_coordinator_crashes_after_first_re.sh",
        environ=rpc_backends_exported)
    session.expect("Backend: llama.cpp-distributed", "-ngl 40", "log of this coordinator: True",
                   r'\{"status":\s*"ok"\}')
