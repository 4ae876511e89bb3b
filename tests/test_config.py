"""Settings: precedence (flags > environment > file > defaults) and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from sollol_llamacpp.settings import LlamacppSettings
from sollol_ollama.settings import OllamaSettings

from sollol_core.config import DEFAULT_PORT, Settings
from sollol_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sollol.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    settings = Settings.load(environ={})
    assert settings.gateway.host == "127.0.0.1"
    assert settings.gateway.port == DEFAULT_PORT
    assert settings.gateway.api_keys == ()
    assert settings.discovery.subnets == ()  # no network sweep unless asked


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [gateway]
        host = "127.0.0.2"
        port = 9000
        api_keys = ["from-file"]
        [health]
        interval_s = 7
    """)
    env = {"SOLLOL_PORT": "9001", "SOLLOL_API_KEYS": "k1, k2"}
    settings = Settings.load(config_path=path, environ=env, flags={"gateway.port": 9002})
    assert settings.gateway.port == 9002          # flag
    assert settings.gateway.api_keys == ("k1", "k2")  # environment
    assert settings.gateway.host == "127.0.0.2"   # file
    assert settings.health.interval_s == 7.0      # file, int accepted as a number
    assert settings.health.timeout_s == 2.0       # default
    assert Settings.load(config_path=path, environ=env).gateway.port == 9001
    assert Settings.load(config_path=path, environ={}).gateway.port == 9000


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[ollama]\nnodes = ['10.0.0.5:11434']\n")
    settings = Settings.load(environ={"SOLLOL_CONFIG": str(path)})
    assert settings.section(OllamaSettings).nodes == ("10.0.0.5:11434",)


def test_keys_of_older_releases_still_set_the_plugins_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "[discovery]\nollama_nodes = ['10.0.0.5:11434']\n"
                           "rpc_backends = ['10.0.0.6']\n")
    settings = Settings.load(config_path=path, environ={})
    assert settings.section(OllamaSettings).nodes == ("10.0.0.5:11434",)
    assert settings.section(LlamacppSettings).rpc_backends == ("10.0.0.6",)


def test_seed_environment_variables() -> None:
    settings = Settings.load(environ={"RPC_BACKENDS": "10.0.0.1:50052,10.0.0.2:50053",
                                      "OLLAMA_NODES": "a:11434, b"})
    assert settings.section(LlamacppSettings).rpc_backends == ("10.0.0.1:50052",
                                                               "10.0.0.2:50053")
    assert settings.section(OllamaSettings).nodes == ("a:11434", "b")


def test_sollol_prefixed_variable_wins_over_legacy_alias() -> None:
    settings = Settings.load(environ={"RPC_BACKENDS": "a:1", "SOLLOL_RPC_BACKENDS": "b:2"})
    assert settings.section(LlamacppSettings).rpc_backends == ("b:2",)


def test_plugin_lists_from_environment() -> None:
    settings = Settings.load(environ={"SOLLOL_DISABLE_PLUGINS": "cpu,otel",
                                      "SOLLOL_LOAD_PLUGINS": "ollama"})
    assert settings.plugins.disable == ("cpu", "otel")
    assert settings.plugins.load == ("ollama",)
    assert Settings.load(environ={}).plugins.load is None


@pytest.mark.parametrize(("env", "expected"), [
    ({"SOLLOL_PORT": "http"}, "SOLLOL_PORT: gateway.port: expected an integer, got 'http'"),
    ({"SOLLOL_PORT": "70000"}, "SOLLOL_PORT: gateway.port: expected a port number 1-65535"),
    ({"RPC_BACKENDS": "10.0.0.1:rpc"},
     "RPC_BACKENDS: llamacpp.rpc_backends: expected host:port, got '10.0.0.1:rpc'"),
    ({"SOLLOL_SUBNETS": "10.0.0/33"},
     "SOLLOL_SUBNETS: discovery.subnets: expected a network in CIDR form"),
    ({"SOLLOL_HEALTH_INTERVAL": "-1"},
     "SOLLOL_HEALTH_INTERVAL: health.interval_s: expected a number above 0"),
    ({"SOLLOL_REQUEST_TIMEOUT": "soon"},
     "SOLLOL_REQUEST_TIMEOUT: routing.request_timeout_s: expected a number"),
])
def test_bad_environment_names_variable_key_and_form(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ=env)
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("[gateway]\nport = '8000'\n", "gateway.port: expected an integer, got '8000'"),
    ("[gateway]\nprot = 8000\n", "gateway.prot: unknown key"),
    ("[gatewya]\n", "gatewya: unknown key"),
    ("[plugins]\ndisable = 'cpu'\n", "plugins.disable: expected a list, got 'cpu'"),
    ("[ollama]\nnodes = [1]\n", "ollama.nodes: item 0: expected a string, got 1"),
    ("[discovery]\nollama_nodes = [1]\n",  # an older release's key, named as written
     "discovery.ollama_nodes: item 0: expected a string, got 1"),
    ("[llamacpp]\nlayer_strategy = 'random'\n",
     "llamacpp.layer_strategy: expected one of memory_aware, even, got 'random'"),
    ("[health]\ntimeout_s = true\n", "health.timeout_s: expected a number, got True"),
    ("[gateway\n", "not valid TOML"),
])
def test_bad_file_names_the_key_and_expected_form(tmp_path: Path, text: str,
                                                   expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        Settings.load(config_path=path, environ={})
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith(f"config file {path}")
    assert expected in caught.value.lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(config_path=tmp_path / "absent.toml", environ={})


def test_bad_flag_is_attributed_to_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"^command line: gateway.port: expected a port"):
        Settings.load(environ={}, flags={"gateway.port": 0})
