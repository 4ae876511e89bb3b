"""Runs the code of SOLLOL's guide as its readers do, against a local fleet.

The guide's code blocks are in ``guide/``, copied verbatim from the "llama.cpp Model Sharding
Guide" and the post describing SOLLOL (each file's first line names its section; the guide's
text had been saved with its UTF-8 read as Windows-1252, and was decoded back). A test runs a
reader's *session*: one or more blocks, in order, in a new Python process, as a reader pastes
them into one file, and compares what it prints with what the guide says it prints. Some blocks
print nothing; a test may add a few lines after a block to show what it did, always marked as
added. Nothing else is changed except what :data:`CHANGES` lists: hosts, ports, file paths, and
the guide's ``[...]`` placeholder for messages.

The fleet, as the guide's reader has it:

* an Ollama node on 127.0.0.1:11434 (Ollama's own address, where ``OllamaPool.auto_configure()``
  looks), served by the project's Ollama emulator; it has ``llama3.2``, not ``llama3.1:70b``;
* three RPC servers started by the guide's own command (Option 2, step 2), one per "machine":
  ``192.168.1.10``-``12`` become ``127.0.0.10``-``12``, port 50052 as written;
* an Ollama model store (``OLLAMA_MODELS``) in which ``llama3.1:70b`` and ``custom-70b`` are the
  real SmolLM2-135M-Instruct GGUF (a big model cannot run here; the routing is the same);
* ``LLAMA_ARG_N_PREDICT`` keeps the small model's answers short on this 2-core machine.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest
from attrs import field, frozen
from sollol_llamacpp.binaries import Binaries, BinariesNotFound
from sollol_llamacpp.testing import (
    listening,
    ollama_store,
    require_binaries,
    smollm2_gguf,
    wait_listening,
)

GUIDE = Path(__file__).parent / "guide"
HOSTS = {"192.168.1.10": "127.0.0.10", "192.168.1.11": "127.0.0.11",
         "192.168.1.12": "127.0.0.12"}
WORKERS = tuple(f"{host}:50052" for host in HOSTS.values())
OLLAMA = ("127.0.0.1", 11434)
#: What a reader types in place of the guide's ``messages=[...]``.
MESSAGES = '[{"role": "user", "content": "Name the three primary colours."}]'
LLAMA_PROCESSES = {"llama-server", "rpc-server", "ggml-rpc-server"}
#: What a program that ran well does not print on its way out.
NOISE = re.compile(r"Traceback|Task was destroyed|Unclosed|Exception ignored|Error")


@frozen
class Change:
    """One edit made wherever ``old`` occurs in a block."""

    old: str
    new: str
    why: str


def changes(rpc_server: Path, store: Path, gguf: Path, logs: Path) -> tuple[Change, ...]:
    """Every edit made to the guide's code: hosts, ports, paths and the messages placeholder."""
    return (
        *(Change(lan, local, "the guide's LAN machines are loopback addresses here")
          for lan, local in HOSTS.items()),
        Change("~/llama.cpp/build/bin/rpc-server", str(rpc_server),
               "llama.cpp is built by `sollol llamacpp install` into SOLLOL's cache"),
        Change("messages=[...]", f"messages={MESSAGES}", "the guide's placeholder"),
        Change("/path/to/custom/model.gguf", str(gguf), "a GGUF file this machine has"),
        Change("/tmp/llama_coordinator_", f"{logs}/llama_coordinator_",
               "coordinator logs are in SOLLOL's cache, not /tmp (shared by every user)"),
        Change("/usr/share/ollama/.ollama/models", str(store), "the Ollama store here"),
    )


def read_block(name: str) -> str:
    return (GUIDE / name).read_text(encoding="utf-8")


@frozen
class Step:
    """One block of the guide, and what the test adds after it (never inside it)."""

    block: str
    then: str = ""
    #: Per-step edits beyond :func:`changes` (e.g. the running coordinator's own port).
    also: tuple[tuple[str, str], ...] = ()


@frozen
class Session:
    """What one reader's Python process printed."""

    script: str
    returncode: int
    stdout: str
    stderr: str
    lines: list[str] = field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "lines", self.stdout.splitlines())

    def expect(self, *patterns: str) -> None:
        """Each pattern (a regular expression) matches one whole line, in this order."""
        at = 0
        for pattern in patterns:
            while at < len(self.lines) and not re.fullmatch(pattern, self.lines[at]):
                at += 1
            assert at < len(self.lines), (
                f"no line matching {pattern!r} (in order) in what the session printed:\n"
                f"{self.stdout}\n--- stderr:\n{self.stderr[-3000:]}")
            at += 1


@frozen
class Reader:
    """Runs sessions of the guide's code as a reader does, with the fleet's environment."""

    binaries: Binaries
    store: Path
    gguf: Path
    logs: Path
    work: Path
    environ: Mapping[str, str]

    @property
    def changes(self) -> tuple[Change, ...]:
        return changes(self.binaries.rpc_server, self.store, self.gguf, self.logs)

    def text(self, name: str, also: Sequence[tuple[str, str]] = ()) -> str:
        """The block, with the changes that apply to it (and only those) made."""
        text = read_block(name)
        for change in self.changes:
            text = text.replace(change.old, change.new)
        for old, new in also:
            assert old in text, f"{old!r} is not in {name}"
            text = text.replace(old, new)
        return text

    def run(self, *steps: Step, environ: Mapping[str, str] | None = None,
            shell_first: str | None = None, timeout_s: float = 300,
            fails: bool = False) -> Session:
        """The steps as one Python program; ``shell_first`` is a guide shell block sourced
        before it (``export ...``). Fails if it leaves a llama.cpp process running, or if the
        program fails (or, with ``fails``, if it does not)."""
        parts = []
        for step in steps:
            parts.append(f"# ---- {step.block}, as a reader runs it\n"
                         + self.text(step.block, step.also))
            if step.then:
                parts.append("# ---- added by the test, not in the guide\n" + step.then)
        script = self.work / f"session-{len(list(self.work.glob('session-*')))}.py"
        script.write_text("\n".join(parts), encoding="utf-8")
        env = {**os.environ, **self.environ, **(environ or {})}
        command = [sys.executable, str(script)]
        if shell_first is not None:
            prologue = self.work / f"{script.stem}.sh"
            prologue.write_text(self.text(shell_first), encoding="utf-8")
            command = ["bash", "-c", f"source {shlex.quote(str(prologue))} && exec "
                       + shlex.join(command)]
        before = llama_processes()
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout_s, cwd=self.work)
        session = Session(script.read_text(), done.returncode, done.stdout, done.stderr)
        assert (done.returncode != 0) == fails, (
            f"the session ended with {done.returncode}:\n{done.stdout}\n--- stderr:\n"
            f"{done.stderr[-5000:]}")
        left = wait_gone(llama_processes() - before)
        assert not left, f"left running after the program ended: {left}"
        noise = [line for line in done.stderr.splitlines() if NOISE.search(line)]
        assert fails or not noise, f"the reader sees errors:\n{done.stderr[-5000:]}"
        return session


def llama_processes() -> set[tuple[int, str]]:
    found = set()
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        if process.info["name"] in LLAMA_PROCESSES:
            found.add((process.info["pid"], " ".join(process.info["cmdline"] or ())))
    return found


def wait_gone(processes: set[tuple[int, str]], timeout_s: float = 10) -> set[tuple[int, str]]:
    """Those still running after ``timeout_s`` (killed then, so one failure stays one)."""
    deadline = time.monotonic() + timeout_s
    alive = set(processes)
    while alive and time.monotonic() < deadline:
        alive = {(pid, cmd) for pid, cmd in alive if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.1)
    for pid, _ in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    try:
        return require_binaries()
    except BinariesNotFound as exc:
        pytest.fail(f"{exc}", pytrace=False)


# Module-scoped, so that no other tests see this fleet (it holds Ollama's and RPC's ports).
@pytest.fixture(scope="module")
def ollama_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reader's Ollama, where Ollama listens (the project's emulator)."""
    if listening(*OLLAMA):
        pytest.skip("127.0.0.1:11434 is taken (a real Ollama?): the guide's examples find "
                    "their Ollama node there, so this fleet cannot run beside it")
    log = (tmp_path_factory.mktemp("ollama") / "ollama.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sollol_ollama.testing", "--port", str(OLLAMA[1]),
         "--name", "ollama", "--model", "llama3.2", "--model", "all-minilm", "--parallel", "4"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_listening(*OLLAMA, process)
        yield f"http://{OLLAMA[0]}:{OLLAMA[1]}"
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def guide_workers(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Option 2, step 2: each line of the guide's block run as its own machine would."""
    block = read_block("guide_04_option_2_manual_setup.sh")
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 3
    logs = tmp_path_factory.mktemp("rpc-servers")
    processes = []
    try:
        for number, (command, host) in enumerate(zip(commands, HOSTS.values(), strict=True)):
            if listening(host, 50052):
                pytest.fail(f"{host}:50052 is taken before the guide's RPC servers start")
            line = command.replace("~/llama.cpp/build/bin/rpc-server",
                                   str(binaries.rpc_server)).replace("0.0.0.0", host)
            log = (logs / f"machine-{number + 1}.log").open("wb")
            # a shell runs it, as the reader's: SIGPIPE is not ignored there
            processes.append(subprocess.Popen(["bash", "-c", line], stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        for process, host in zip(processes, HOSTS.values(), strict=True):
            wait_listening(host, 50052, process)
        yield processes
    finally:
        for process in processes:
            stop_group(process, signal.SIGKILL)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = smollm2_gguf()
    return ollama_store(tmp_path_factory.mktemp("ollama-store") / "models",
                        {"llama3.1:70b": gguf, "custom-70b": gguf})


@pytest.fixture
def reader(binaries: Binaries, store: Path, ollama_node: str, tmp_path: Path) -> Reader:
    from sollol_llamacpp.processes import logs_dir

    return Reader(binaries=binaries, store=store, gguf=smollm2_gguf(), logs=logs_dir(),
                  work=tmp_path, environ={"OLLAMA_MODELS": str(store),
                                          "LLAMA_ARG_N_PREDICT": "24",
                                          "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def rpc_backends_exported(guide_workers: list[subprocess.Popen[bytes]],
                          reader: Reader) -> dict[str, str]:
    """Option 3's ``export RPC_BACKENDS=...`` as a reader who set it up has it."""
    line = next(line for line in reader.text(
        "guide_06_option_3_using_environment_variables.sh").splitlines()
        if line.startswith("export "))
    name, _, value = line.removeprefix("export ").partition("=")
    return {name: value.strip('"')}
