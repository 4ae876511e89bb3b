from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sollol_llamacpp.binaries import Binaries, BinariesNotFound
from sollol_llamacpp.testing import gemma_gguf, require_binaries, rpc_workers

from sollol_core.plugins import environment_variables

LLAMA_PROCESSES = {"llama-server", "ggml-rpc-server", "rpc-server"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*environment_variables(), "SOLLOL_CONFIG", "OLLAMA_MODELS"]:
        if name != "SOLLOL_LLAMACPP_BIN_DIR":
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    """The real llama.cpp binaries: a missing build fails the run, it never skips it."""
    try:
        return require_binaries()
    except BinariesNotFound as exc:
        pytest.fail(f"{exc}", pytrace=False)


@pytest.fixture(scope="session")
def gemma() -> Path:
    return gemma_gguf()


@pytest.fixture(scope="session")
def shared_workers(binaries: Binaries,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three real RPC workers shared by the tests that do not hurt them."""
    with rpc_workers(binaries, 3, tmp_path_factory.mktemp("workers")) as addresses:
        yield addresses


@pytest.fixture(scope="session", autouse=True)
def _no_llama_process_outlives_the_session() -> Iterator[None]:
    yield
    me = psutil.Process(os.getpid())
    left = [p for p in me.children(recursive=True) if p.name() in LLAMA_PROCESSES]
    for process in left:
        process.kill()
    assert not left, f"llama.cpp processes left running: {[p.pid for p in left]}"
