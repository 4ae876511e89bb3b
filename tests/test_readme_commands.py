"""The README's set-up commands are what CI and the demo actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)


def test_the_readme_gives_exactly_two_set_up_commands_and_ci_runs_the_test_one() -> None:
    main_job, tests = setup_commands()
    assert main_job.endswith("sollol demo") and tests.endswith("python -m pytest")
    ci_lines = ROOT.joinpath(".ci", "run").read_text().strip().splitlines()
    assert ci_lines[-1] == tests
    assert "set -euo pipefail" in ci_lines  # pytest's exit 5 (no test ran) fails CI
