"""The core's promise: a policy this repository did not write, installed with pip, changes a
routing decision without a line of core code changing, and blocking it by name restores the
default."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DISTRIBUTION = "sollol-pin-fixture"

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "sollol-pin-fixture"
version = "0.0.1"
dependencies = ["sollol-core"]

[tool.setuptools]
py-modules = ["sollol_pin_fixture"]

[project.entry-points.sollol]
pin-fixture = "sollol_pin_fixture"
"""

POLICY = '''
"""Pin llama3.2 to the node named b, whatever its load."""
from sollol_core.hookspecs import hookimpl
from sollol_core.types import Decision


@hookimpl
def sollol_place(request, fleet):
    if request.model != "llama3.2":
        return None
    for node in fleet.healthy():
        if node.endpoint.host == "b":
            return Decision.whole(request, node.endpoint, policy="pin-fixture",
                                  reason="llama3.2 is pinned to b")
    return None
'''

# The fleet: two static nodes, b busier than a, so the default policy picks a.
FLEET = '''
from sollol_core.testing import StaticBackend, node
backend = StaticBackend([node("a", models=["llama3.2"]),
                         node("b", models=["llama3.2"], in_flight=3)])
'''

ASK = """
import json
from sollol_core.sync import OllamaPool
with OllamaPool() as pool:
    response = pool.chat("llama3.2", [{"role": "user", "content": "Hi"}])
print(json.dumps({"routing": response["_routing"],
                  "answer": response["message"]["content"]}))
"""


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, timeout=300)


@pytest.fixture
def installed_policy(tmp_path: Path) -> Iterator[None]:
    source = tmp_path / "policy"
    source.mkdir()
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "sollol_pin_fixture.py").write_text(POLICY)
    # No index, no build isolation: the build uses this environment's setuptools, offline.
    pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    try:
        yield
    finally:
        pip("uninstall", "-y", DISTRIBUTION)


@pytest.fixture
def fleet_path(tmp_path: Path) -> Path:
    """A second plugin, the static fleet, as a distribution on PYTHONPATH."""
    site = tmp_path / "fleet"
    site.mkdir()
    (site / "sollol_test_fleet.py").write_text(FLEET)
    info = site / "sollol_test_fleet-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sollol-test-fleet\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[sollol]\nfleet = sollol_test_fleet:backend\n")
    return site


def run(args: list[str], fleet_path: Path, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SOLLOL_")}
    environ.update(PYTHONPATH=str(fleet_path), **env)
    done = subprocess.run(args, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pip_installed_policy_changes_the_decision_and_blocking_restores_it(
        installed_policy: None, fleet_path: Path) -> None:
    sollol = shutil.which("sollol", path=str(Path(sys.executable).parent)) or "sollol"

    listed = json.loads(run([sollol, "plugins", "--json"], fleet_path))
    pin = next(p for p in listed if p["name"] == "pin-fixture")
    assert (pin["state"], pin["distribution"], pin["version"]) == \
        ("enabled", DISTRIBUTION, "0.0.1")
    assert pin["hooks"] == ["sollol_place"]

    pinned = json.loads(run([sys.executable, "-c", ASK], fleet_path))
    assert pinned["routing"]["policy"] == "pin-fixture"
    assert pinned["routing"]["node"] == "b:11434"
    assert pinned["answer"] == "answered by b"

    blocked_env = {"SOLLOL_DISABLE_PLUGINS": "pin-fixture"}
    default = json.loads(run([sys.executable, "-c", ASK], fleet_path, **blocked_env))
    assert default["routing"]["policy"] == "default"
    assert default["routing"]["node"] == "a:11434"
    assert default["answer"] == "answered by a"

    listed = json.loads(run([sollol, "plugins", "--json"], fleet_path, **blocked_env))
    assert next(p for p in listed if p["name"] == "pin-fixture")["state"] == "blocked"

