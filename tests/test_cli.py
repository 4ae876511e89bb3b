"""The `sollol` command as a user runs it: a real process, its output and its exit code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOLLOL, *args], capture_output=True, text=True, timeout=60,
                          env={**clean_env(), **(env or {})})


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SOLLOL_") and k not in {"RPC_BACKENDS", "OLLAMA_NODES"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("args", [[], ["serve"], ["discover"], ["status"], ["plugins"]])
def test_help_everywhere(args: list[str]) -> None:
    result = run(*args, "--help")
    assert result.returncode == 0
    assert "Usage: sollol" in result.stdout


def test_plugins_table_and_json() -> None:
    table = run("plugins")
    assert table.returncode == 0 and "builtin-placement" in table.stdout
    listed = {p["name"]: p for p in json.loads(run("plugins", "--json").stdout)}
    assert listed["builtin-placement"]["state"] == "enabled"
    assert listed["builtin-placement"]["hooks"] == ["sollol_place"]
    blocked = json.loads(run("plugins", "--json",
                             env={"SOLLOL_DISABLE_PLUGINS": "builtin-placement"}).stdout)
    assert {p["name"]: p["state"] for p in blocked}["builtin-placement"] == "blocked"


def test_discover_prints_the_fleet_as_json_and_as_a_table() -> None:
    result = run("discover", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"nodes", "telemetry", "performance", "taken_at", "local_host"}
    human = run("discover", env={"SOLLOL_LOAD_PLUGINS": ""})
    assert human.returncode == 0
    assert "No nodes found" in human.stdout


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"SOLLOL_PORT": "eighty"}, ["discover"], "SOLLOL_PORT: gateway.port: expected an integer"),
    ({"RPC_BACKENDS": "host:port"}, ["plugins"], "RPC_BACKENDS: llamacpp.rpc_backends"),
    ({}, ["serve", "--port", "0"], "command line: gateway.port: expected a port number"),
    ({}, ["--config", "/nonexistent/sollol.toml", "discover"], "not found"),
])
def test_bad_settings_exit_2_with_one_clear_line(env: dict[str, str], args: list[str],
                                                 message: str) -> None:
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.stdout == ""


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "sollol.toml"
    config.write_text("[gateway]\nprot = 1\n")
    result = run("--config", str(config), "discover")
    assert result.returncode == 2
    assert "gateway.prot: unknown key" in result.stderr


def test_status_without_a_gateway_fails_clearly() -> None:
    result = run("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "no SOLLOL gateway answers" in result.stderr


@pytest.fixture
def gateway() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = subprocess.Popen([SOLLOL, "serve", "--port", str(port), "--api-key", "s3cret"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_env())
    try:
        wait_until_up(port)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the gateway did not come up")


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_serve_answers_guards_with_api_keys_and_stops_on_sigint(
        gateway: tuple[subprocess.Popen[str], int]) -> None:
    process, port = gateway
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/") == (200, "Ollama is running")
    status, body = get(f"{base}/api/version")
    assert status == 401 and "API key" in json.loads(body)["error"]
    status, body = get(f"{base}/api/version", token="s3cret")
    assert status == 200 and "version" in json.loads(body)

    status_cmd = run("status", "--url", base, "--api-key", "s3cret", "--json")
    assert status_cmd.returncode == 0, status_cmd.stderr
    assert "builtin-placement" in {p["name"] for p in json.loads(status_cmd.stdout)["plugins"]}
    denied = run("status", "--url", base)
    assert denied.returncode == 1 and "wants an API key" in denied.stderr

    second = run("serve", "--port", str(port))
    assert second.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in second.stderr

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 0
    assert f"SOLLOL gateway on http://127.0.0.1:{port}" in process.stderr.read()
