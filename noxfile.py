"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s demo`.

Each session installs the core and every plugin, editable, from requirements-dev.txt.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
PLUGIN_SOURCES = sorted(str(p) for pattern in ("plugins/*/src", "docs/examples/*/src")
                        for p in ROOT.glob(pattern))


def install(session: nox.Session) -> None:
    session.install("-r", "requirements-dev.txt")


@nox.session
def tests(session: nox.Session) -> None:
    """Every test of the core and the plugins (llama.cpp tests included, never skipped)."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything; mypy --strict over the core, each plugin and the benchmarks (which
    no test runs: a settings change once broke one unnoticed)."""
    install(session)
    session.run("ruff", "check", ".")
    session.run("mypy")
    for source in PLUGIN_SOURCES:
        session.run("mypy", "--strict", source)
    session.run("mypy", "--strict", "--ignore-missing-imports",
                *sorted(str(p) for p in Path("benchmarks").glob("*.py")))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; figures go to benchmarks/results/ (compare with docs/benchmarks.md)."""
    install(session)
    session.run("python", "benchmarks/placement.py", *session.posargs)
    session.run("python", "benchmarks/planner.py", *session.posargs)
    session.run("python", "benchmarks/gateway.py", *session.posargs)
    if shutil.which("valgrind") and shutil.which("gcc"):  # instruction counts, A/B-stable
        session.run("python", "benchmarks/gateway_instructions.py", *session.posargs)
    else:
        session.log("benchmarks/gateway_instructions.py skipped: it needs valgrind and gcc")
    session.run("python", "benchmarks/llamacpp.py", *session.posargs)
    session.run("python", "benchmarks/fleet.py", *session.posargs)
    session.run("python", "benchmarks/prompt_cache.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the local demo cluster (llama.cpp built once into the cache)."""
    install(session)
    session.run("sollol", "llamacpp", "install")
    session.run("sollol", "demo", *session.posargs)
