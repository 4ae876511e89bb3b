"""The README's Python API example runs as written, against emulated Ollama nodes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from sollol_ollama.testing import EmulatorFleet

README = Path(__file__).resolve().parents[3] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


async def test_the_readme_python_api_example_runs() -> None:
    (example,) = [b for b in python_blocks(README.read_text()) if "OllamaPool" in b]
    async with EmulatorFleet.of(2) as fleet:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
        env.update(OLLAMA_NODES=",".join(fleet.addresses), SOLLOL_LOAD_PLUGINS="ollama")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", example, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    answer, routing = out.decode().splitlines()[-2:]
    assert answer.split()[0] in {"node0", "node1"}  # the emulator that answered
    assert "'backend': 'ollama'" in routing and "'reason':" in routing
