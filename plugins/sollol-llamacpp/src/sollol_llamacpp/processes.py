"""Child processes SOLLOL starts (RPC workers, coordinators): started with a log file, stopped
with SOLLOL, never left behind.

On Linux each child asks the kernel to send it SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), so even a SOLLOL that is killed outright, or a program that exits
without closing its router, leaves no orphan. SIGKILL, not SIGTERM: a coordinator whose parent
is gone has nothing to finish, and llama-server can hang in its own shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from attrs import define

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@define
class Child:
    """One running child process and the file its output goes to."""

    process: asyncio.subprocess.Process
    log_path: Path

    @classmethod
    async def spawn(cls, argv: Sequence[str], log_path: Path) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            log.write(f"\n--- {' '.join(argv)}\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent,
                # Keep Python's SIG_IGN for SIGPIPE: rpc-server writes to a peer that may have
                # hung up (a coordinator killed mid-answer) and would die of it; ignored, the
                # write fails, the worker drops that connection and keeps serving.
                restore_signals=False)
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; always reaped (no zombie)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        await self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str, count: int, first: int, taken: Sequence[int] = ()) -> list[int]:
    """``count`` ports that can be bound on ``host``, counting up from ``first``."""
    found: list[int] = []
    port = first
    while len(found) < count:
        if port > 65535:
            raise OSError(f"no {count} free ports on {host} from {first}")
        if port not in taken and port_is_free(host, port):
            found.append(port)
        port += 1
    return found


def ephemeral_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out: two coordinators started at once never get the same."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def wait_for_port(host: str, port: int, timeout_s: float, child: Child) -> None:
    """Until the child itself listens on ``port``: another process holding that port does not
    count, and a child that exits fails at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if not child.alive:
            raise OSError(f"exited with status {child.process.returncode}")
        if _listens(child.pid, port):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not listening on {host}:{port} after {timeout_s:g} s")


def _listens(pid: int, port: int) -> bool:
    try:
        sockets = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in sockets)


def logs_dir() -> Path:
    from sollol_llamacpp.binaries import cache_root

    path = cache_root().parent / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


#: Logs of one kind kept in :func:`logs_dir` (the newest; one less than an hour old is kept
#: anyway: its process may still be writing it).
KEEP_LOGS = 50


def log_file(kind: str, name: str) -> Path:
    """A new log's path, ``<logs>/<kind><name>.log``; older logs of that kind beyond the newest
    :data:`KEEP_LOGS` are removed, so that years of coordinators do not fill the cache."""
    directory = logs_dir()
    old = sorted(directory.glob(f"{kind}*.log"), key=_modified, reverse=True)[KEEP_LOGS:]
    hour_ago = time.time() - 3600
    for path in old:
        if _modified(path) < hour_ago:
            with contextlib.suppress(OSError):
                path.unlink()
    return directory / f"{kind}{name}.log"


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def run_id() -> str:
    return f"{os.getpid()}"
