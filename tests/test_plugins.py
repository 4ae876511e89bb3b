"""Loading plugins from entry points: lazily, with block and allow lists, surviving broken ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sollol_core.config import PluginSettings, Settings
from sollol_core.errors import NoRouteError
from sollol_core.plugins import Plugins
from sollol_core.router import Router
from sollol_core.testing import StaticBackend, node
from sollol_core.types import InferenceRequest

POLICY = '''
from sollol_core.hookspecs import hookimpl
from sollol_core.types import Decision

@hookimpl
def sollol_place(request, fleet):
    last = sorted(n.endpoint.key for n in fleet.healthy())[-1]
    target = next(n.endpoint for n in fleet.nodes if n.endpoint.key == last)
    return Decision.whole(request, target, policy="{name}", reason="always the last node")
'''


def install_fake_distribution(site: Path, dist: str, entry: str, module: str, source: str) -> None:
    """A distribution as pip leaves it: a module and a dist-info with the entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[sollol]\n{entry} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    install_fake_distribution(tmp_path, "sollol-last", "last", "sollol_test_last",
                              POLICY.format(name="last"))
    install_fake_distribution(tmp_path, "sollol-broken", "broken", "sollol_test_broken",
                              "raise ImportError('needs libfoo.so')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("sollol_test_last", "sollol_test_broken"):
        sys.modules.pop(module, None)


def infos(plugins: Plugins) -> dict[str, tuple[str, str, str]]:
    return {i.name: (i.state, i.distribution, i.version) for i in plugins.infos}


def test_entry_points_are_loaded_with_their_distribution(site: Path) -> None:
    assert "sollol_test_last" not in sys.modules
    plugins = Plugins.load()
    found = infos(plugins)
    assert found["last"] == ("enabled", "sollol-last", "1.2.3")
    assert found["builtin-placement"][0] == "enabled"
    assert found["broken"][0] == "failed"
    assert "libfoo" in next(i.error for i in plugins.infos if i.name == "broken")


def test_blocked_plugins_are_never_imported(site: Path) -> None:
    settings = Settings.load(environ={"SOLLOL_DISABLE_PLUGINS": "last,broken"})
    found = infos(Plugins.load(settings.plugins))
    assert found["last"][0] == "blocked" and found["broken"][0] == "blocked"
    assert "sollol_test_last" not in sys.modules


def test_allow_list_loads_only_the_named_entry_points(site: Path) -> None:
    settings = Settings.load(environ={"SOLLOL_LOAD_PLUGINS": "last"})
    found = infos(Plugins.load(settings.plugins))
    assert found["last"][0] == "enabled"
    assert found["broken"][0] == "not allowed"
    assert found["builtin-placement"][0] == "enabled"


async def test_an_installed_policy_decides_and_blocking_it_restores_the_default(
        site: Path) -> None:
    backend = StaticBackend([node("a", models=["m"]), node("z", models=["m"], in_flight=3)])
    request = InferenceRequest.chat("m", [])

    async def chosen(plugin_settings: PluginSettings) -> tuple[str, str]:
        router = Router.create(Settings(), Plugins.load(plugin_settings,
                                                        extra=[("static", backend)]))
        await router.fleet.refresh()
        decision = router.decide(request)
        assert decision.target is not None
        return decision.policy, decision.target.host

    assert await chosen(PluginSettings()) == ("last", "z")
    assert await chosen(PluginSettings(disable=("last",))) == ("default", "a")


async def test_blocking_the_builtin_policy_leaves_no_policy(site: Path) -> None:
    backend = StaticBackend([node("a", models=["m"])])
    router = Router.create(Settings(), Plugins.load(
        PluginSettings(disable=("builtin-placement",), load=()), extra=[("static", backend)]))
    await router.fleet.refresh()
    with pytest.raises(NoRouteError, match="no placement policy"):
        router.decide(InferenceRequest.chat("m", []))


def test_importing_sollol_core_loads_no_plugin_and_starts_nothing(site: Path) -> None:
    marker = site / "imported"
    install_fake_distribution(site, "sollol-marker", "marker", "sollol_test_marker",
                              f"open({str(marker)!r}, 'w').close()\n")
    probe = textwrap.dedent("""
        import sys, threading
        import sollol_core
        loaded = sorted(m for m in sys.modules
                        if m.startswith(("sollol", "pluggy", "aiohttp", "click")))
        print(loaded, threading.active_count())
    """)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['sollol_core'] 1"
    assert not marker.exists()
