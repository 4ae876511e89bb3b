"""The README's Python API example runs as written, against emulated Ollama nodes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
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


async def test_the_readme_ollama_client_snippet_runs_against_sollol_serve() -> None:
    """``sollol serve`` on its default address, the README's ``ollama.Client`` lines verbatim."""
    (snippet,) = [b for b in python_blocks(README.read_text()) if "ollama.Client" in b]
    # The snippet ends with an expression: print it, so the test can see the answer.
    runner = ("import ast, sys\ntree = ast.parse(sys.argv[1])\n"
              "tree.body[-1] = ast.Expr(ast.Call(ast.Name('print', ast.Load()),"
              " [tree.body[-1].value], []))\n"
              "exec(compile(ast.fix_missing_locations(tree), 'README', 'exec'))\n")
    sollol = Path(sys.executable).parent / "sollol"
    async with EmulatorFleet.of(2) as fleet:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
        env.update(OLLAMA_NODES=",".join(fleet.addresses), SOLLOL_LOAD_PLUGINS="ollama")
        server = await asyncio.create_subprocess_exec(
            str(sollol), "serve", env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            for _ in range(200):  # until the gateway listens on the README's address
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", 11435)
                    writer.close()
                    break
                except OSError:
                    assert server.returncode is None, "sollol serve exited (is 11435 in use?)"
                    await asyncio.sleep(0.1)
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-c", runner, snippet, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(client.communicate(), 60)
        finally:
            server.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(server.wait(), 15) == 0
    assert client.returncode == 0, err.decode()
    printed = out.decode()
    assert "model='llama3.2'" in printed and "role='assistant'" in printed
    assert re.search(r"content='node[01] ", printed)  # an emulated node answered through SOLLOL
