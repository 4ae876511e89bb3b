"""`sollol llamacpp ...` as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from sollol_llamacpp.binaries import Binaries

SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


def test_install_is_instant_when_cached(binaries: Binaries) -> None:
    started = time.monotonic()
    done = subprocess.run([SOLLOL, "llamacpp", "install"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "llama-server:" in done.stdout and "rpc worker:" in done.stdout
    assert "demo model:" in done.stdout and "SmolLM2-135M-Instruct.Q4_1.gguf" in done.stdout
    assert time.monotonic() - started < 30  # no build ran (a build takes minutes)


def test_workers_start_serves_until_ctrl_c_and_leaves_nothing(binaries: Binaries) -> None:
    process = subprocess.Popen([SOLLOL, "llamacpp", "workers", "start", "2", "--port", "50452"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SOLLOL_LLAMACPP_BIN_DIR":
                                    str(binaries.rpc_server.parent)})
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline(), process.stdout.readline()]
        assert lines[0].startswith("2 RPC workers running")
        assert lines[1].startswith('export RPC_BACKENDS="127.0.0.1:')
        workers = [c for c in psutil.Process(process.pid).children(recursive=True)
                   if c.name() in {"ggml-rpc-server", "rpc-server"}]
        assert len(workers) == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert not [w for w in workers if w.is_running()
                    and w.status() != psutil.STATUS_ZOMBIE]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_non_loopback_worker_needs_allow_remote(binaries: Binaries) -> None:
    done = subprocess.run([SOLLOL, "llamacpp", "workers", "start", "1", "--host", "192.0.2.1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--allow-remote" in done.stderr and "unauthenticated" in done.stderr


def test_demo_runs_one_request_whole_and_one_sharded_then_stops_everything(
        binaries: Binaries, gemma: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
    env["SOLLOL_LLAMACPP_BIN_DIR"] = str(binaries.rpc_server.parent)
    before = {p.pid for p in psutil.process_iter()}
    done = subprocess.run([SOLLOL, "demo", "--once", "--port", str(port)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    ran_on = [line.split("ran on:", 1)[1].strip() for line in done.stdout.splitlines()
              if "ran on:" in line]
    assert len(ran_on) == 2
    assert ran_on[0].startswith("llamacpp://127.0.0.1:")
    assert ran_on[1].startswith("sharded:127.0.0.1:") and ran_on[1].count(",") == 1
    assert "forced by [llamacpp] shard" in done.stdout
    answers = [line.split("answer:", 1)[1].lower() for line in done.stdout.splitlines()
               if "answer:" in line]
    assert len(answers) == 2  # an instruct model answers the question, whole and sharded alike
    assert all(all(colour in a for colour in ("red", "blue", "yellow")) for a in answers), answers
    left = [p for p in psutil.process_iter(["name"]) if p.pid not in before
            and p.info["name"] in {"llama-server", "ggml-rpc-server", "rpc-server"}]
    assert left == []
