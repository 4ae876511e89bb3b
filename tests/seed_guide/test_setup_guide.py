"""The guide's "Setup Guide": auto-setup, manual setup, environment variables, verification."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import ollama

from .conftest import (
    WORKERS,
    Reader,
    Step,
    listening,
    llama_processes,
    stop_group,
    wait_gone,
    wait_listening,
)

USE_IT = ("response = router.route_request(model='llama3.1:70b', messages=[{'role': 'user', "
          "'content': 'Hello!'}])\n"
          "print(response['_routing']['backend'])\n"
          "print(sorted(f\"{b['host']}:{b['port']}\" for b in router.coordinator.rpc_backends))\n")

REASON = "print(response['_routing']['reason'])\n"
SOME_OF_THEM = r"\['127\.0\.0\.1[012]:50052'(, '127\.0\.0\.1[012]:50052')+\]"


def test_option_1_auto_setup_starts_the_workers_it_does_not_find(reader: Reader) -> None:
    """No RPC server runs where auto-discovery looks: SOLLOL starts three, on 50052 and up."""
    session = reader.run(Step("guide_02_option_1_auto_setup_recommended.py", then=USE_IT))
    session.expect(r"llama\.cpp-distributed",
                   r"\['127\.0\.0\.1:5005\d', '127\.0\.0\.1:5005\d', '127\.0\.0\.1:5005\d'\]")


def test_option_1_auto_setup_uses_the_workers_it_finds(
        reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    """Three RPC servers are known (``RPC_BACKENDS``): auto-setup starts none."""
    before = llama_processes()
    session = reader.run(
        Step("guide_02_option_1_auto_setup_recommended.py",
             then=USE_IT + "import psutil\n"
             "mine = [p.name() for p in psutil.Process().children(recursive=True)]\n"
             "print(f'workers started: {sum(\"rpc-server\" in n for n in mine)}')\n"),
        environ=rpc_backends_exported)
    session.expect(r"llama\.cpp-distributed", re.escape(repr(sorted(WORKERS))),
                   "workers started: 0")
    assert not wait_gone(llama_processes() - before)


def test_option_2_manual_setup(reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    """Step 2's servers (started by the guide's own command) named in ``rpc_backends``."""
    session = reader.run(Step("guide_05_option_2_manual_setup.py", then=USE_IT + REASON))
    # as few of them as the model fits (each hop costs, as the guide says), and why
    session.expect(r"llama\.cpp-distributed", SOME_OF_THEM, r".*sharded over 2 RPC workers.*")


def test_option_3_environment_variables_and_the_gateway(
        reader: Reader, rpc_backends_exported: dict[str, str], tmp_path: Path) -> None:
    """``export RPC_BACKENDS=...; python -m sollol.gateway`` serves the sharded model to an
    Ollama client; then ``HybridRouter`` picks ``RPC_BACKENDS`` up by itself."""
    script = tmp_path / "option3.sh"
    script.write_text(reader.text("guide_06_option_3_using_environment_variables.sh"))
    env = {**os.environ, **reader.environ, "PATH": f"{Path(os.sys.executable).parent}:"
           f"{os.environ['PATH']}"}
    log = (tmp_path / "gateway.log").open("wb")
    before = llama_processes()
    gateway = subprocess.Popen(["bash", str(script)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_listening("127.0.0.1", 11435, gateway, timeout_s=60)
        reply = ollama.Client(host="http://127.0.0.1:11435").chat(
            model="llama3.1:70b", messages=[{"role": "user", "content": "Hello!"}])
        assert reply.message.content
    finally:
        stop_group(gateway, signal.SIGINT)
    assert gateway.returncode == 0, (tmp_path / "gateway.log").read_text()[-3000:]
    assert not wait_gone(llama_processes() - before)
    assert not listening("127.0.0.1", 11435)
    session = reader.run(
        Step("guide_05_option_2_manual_setup.py"),  # its imports; Option 3 continues Option 2
        Step("guide_07_option_3_using_environment_variables.py", then=USE_IT),
        environ=rpc_backends_exported)
    session.expect(r"llama\.cpp-distributed", SOME_OF_THEM)


def test_verification_in_python(reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    session = reader.run(Step("guide_09_verification.py"))
    session.expect("RPC backend: ✓ Available")


def test_ps_lists_the_rpc_servers(reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    """Troubleshooting, "Check RPC servers are running": ``ps aux | grep rpc-server``."""
    # ps cuts lines at the terminal's width: SOLLOL's cache path to the binary is long
    shown = subprocess.run(["bash", "-c", reader.text("guide_23_issue_rpc_backends_not_found.sh")],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "COLUMNS": "300"}).stdout
    for worker in WORKERS:
        host, port = worker.split(":")
        assert f"rpc-server -H {host} -p {port}" in shown, shown


def test_option_1_auto_setup_builds_llama_cpp_when_it_is_not_installed(
        reader: Reader, tmp_path: Path) -> None:
    """No llama.cpp anywhere (an empty cache, no ``~/llama.cpp``, nothing on PATH): auto-setup
    runs the installer ("clone and build llama.cpp"). This machine has no C++ toolchain on the
    PATH given, so the installer stops at once and says what to install; with one, it builds
    (minutes, with progress; `sollol llamacpp install` is the same installer, which CI runs)."""
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    session = reader.run(
        Step("guide_02_option_1_auto_setup_recommended.py", then=USE_IT), fails=True,
        environ={"PATH": str(bare), "HOME": str(tmp_path / "home"),
                 "SOLLOL_CACHE_DIR": str(tmp_path / "cache")})
    assert "llama.cpp is not installed here: building it now" in session.stderr
    assert "Building llama.cpp needs cmake" in session.stderr, session.stderr[-3000:]
