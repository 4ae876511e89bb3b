"""The benchmarks configure SOLLOL as their pages say; no other test runs them, so a settings
change that breaks one is caught here, not in the next `nox -s bench`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from sollol_llamacpp.settings import LlamacppSettings

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # they import their `report` helper
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_llamacpp_benchmark_gateway_shards_the_model_it_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    parts = load("llamacpp_parts", monkeypatch)
    settings = parts.gateway_settings(["127.0.0.1:50052", "127.0.0.1:50053"],
                                      Path("/models/m.gguf"), Path("/opt/llama/bin"))
    own = settings.section(LlamacppSettings)
    assert own.rpc_backends == ("127.0.0.1:50052", "127.0.0.1:50053")
    assert own.models == {parts.MODEL: "/models/m.gguf"} and own.bin_dir == "/opt/llama/bin"
    assert (own.context_size, own.parallel) == (parts.CONTEXT_SIZE, parts.PARALLEL)
    assert settings.plugins.load == ("llamacpp",)
