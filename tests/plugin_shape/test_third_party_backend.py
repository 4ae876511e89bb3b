"""A third-party backend distribution, installed next to SOLLOL without any change to the core,
declares ``[mybackend]`` settings, is refused with one clear line for a bad value, gets its
checked values at run time, and adds a metric and a dashboard panel. Tried through the real
``sollol`` command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

HERE = Path(__file__).resolve().parent
SOLLOL = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, str]:
    """The plugin as pip would leave a distribution on disk: its package and a ``dist-info``
    with its ``sollol`` entry point; the environment that puts it on the path."""
    site = tmp_path / "site"
    (site / "mybackend").mkdir(parents=True)
    shutil.copy(HERE / "mybackend_plugin.py", site / "mybackend" / "plugin.py")
    (site / "mybackend" / "__init__.py").write_text("")
    info = site / "sollol_mybackend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sollol-mybackend\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[sollol]\nmybackend = mybackend.plugin:MyBackend\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SOLLOL_", "OLLAMA_", "MYBACKEND_")) and k != "RPC_BACKENDS"}
    return {**env, "PYTHONPATH": str(site), "SOLLOL_LOAD_PLUGINS": "mybackend",
            "SOLLOL_HEALTH_INTERVAL": "0.3"}


def sollol(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SOLLOL, *args], env=env, capture_output=True, text=True, timeout=60)


def test_its_plugin_is_listed_with_its_distribution(installed: dict[str, str]) -> None:
    result = sollol("plugins", "--json", env=installed)
    assert result.returncode == 0, result.stderr
    (mine,) = [p for p in json.loads(result.stdout) if p["name"] == "mybackend"]
    assert mine["state"] == "enabled" and mine["distribution"] == "sollol-mybackend"
    assert "sollol_settings_sections" in mine["hooks"] and "sollol_metrics" in mine["hooks"]


@pytest.mark.parametrize(("config", "env", "args", "line"), [
    ("[mybackend]\nslots = 0\n", {}, [],
     "mybackend.slots: expected a number above 0, got 0"),
    ("[mybackend]\ngreeting = 3\n", {}, [], "mybackend.greeting: expected a string, got 3"),
    ("[mybackend]\ncolour = 'red'\n", {}, [], "mybackend.colour: unknown key"),
    ("", {"MYBACKEND_SLOTS": "many"}, [],
     "MYBACKEND_SLOTS: mybackend.slots: expected an integer, got 'many'"),
    ("", {}, ["--my-mood", "grumpy"],
     "command line: mybackend.mood: expected one of calm, cheerful, got 'grumpy'"),
])
def test_a_bad_value_is_one_line_and_exit_2(installed: dict[str, str], tmp_path: Path,
                                            config: str, env: dict[str, str], args: list[str],
                                            line: str) -> None:
    path = tmp_path / "sollol.toml"
    path.write_text(config)
    result = sollol("--config", str(path), "serve", "--port", str(free_port()), *args,
                    env={**installed, **env})
    assert result.returncode == 2, result.stderr
    (printed,) = result.stderr.strip().splitlines()
    assert printed.startswith("sollol: error: ") and printed.endswith(line), printed


def test_without_the_plugin_its_section_is_unknown(installed: dict[str, str],
                                                   tmp_path: Path) -> None:
    path = tmp_path / "sollol.toml"
    path.write_text("[mybackend]\nslots = 3\n")
    env = {k: v for k, v in installed.items() if k != "PYTHONPATH"}
    result = sollol("--config", str(path), "discover", env=env)
    assert result.returncode == 2 and "mybackend: unknown key" in result.stderr


async def test_its_settings_metric_and_panel_at_run_time(installed: dict[str, str],
                                                         tmp_path: Path) -> None:
    path = tmp_path / "sollol.toml"
    path.write_text("[mybackend]\ngreeting = 'bonjour'\n")
    with running(["--config", str(path), "serve", "--my-mood", "cheerful"],
                 {**installed, "MYBACKEND_SLOTS": "3"}) as url:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/api/generate",
                                    json={"model": "echo", "prompt": "hi", "stream": False}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["response"] == "bonjour (cheerful)"
            async with session.get(f"{url}/metrics") as r:
                metrics = await r.text()
            assert "mybackend_slots 3.0" in metrics and "mybackend_served 1.0" in metrics
            async with session.get(f"{url}/dashboard/state") as r:
                assert r.status == 200, await r.text()
                (panel,) = [p for p in (await r.json())["panels"] if p["key"] == "mybackend"]
    assert panel["title"] == "My backend"
    assert panel["groups"][0]["rows"] == [["bonjour", 3, 1]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class running:
    """``sollol <args> --port P`` until the block ends (then stopped and checked to exit)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args, self.env = args, env

    def __enter__(self) -> str:
        port = free_port()
        self.process = subprocess.Popen([SOLLOL, *self.args, "--port", str(port)], env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.process.stderr.read() if self.process.stderr else "")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return url
            except OSError:
                time.sleep(0.1)
        self.process.kill()
        raise AssertionError("sollol serve did not come up")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=20) == 0


