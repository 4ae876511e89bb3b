"""The post describing SOLLOL: a bare ``HybridRouter()`` finds the llama.cpp RPC server on
port 50052 and the Ollama node on 11434 by itself, and routes to both."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from sollol_llamacpp.binaries import Binaries

from .conftest import Reader, Step, listening, stop_group, wait_listening

LOOK = """import asyncio

HI = [{"role": "user", "content": "Hi"}]

async def look():
    small = await router.route_request(model="llama3.2", messages=HI)
    large = await router.route_request(model="llama3.1:70b", messages=HI)
    print(f"shards llama3.1:70b: {await router.should_use_distributed('llama3.1:70b')}")
    print(f"llama3.2: {small['_routing']['backend']}")
    print(f"llama3.1:70b: {large['_routing']['backend']} over {router.coordinator.rpc_backends}")

asyncio.run(look())
"""


@pytest.fixture
def worker_on_50052(binaries: Binaries) -> Iterator[None]:
    """An RPC server as its README starts it: ``rpc-server -p 50052`` (on 127.0.0.1)."""
    if listening("127.0.0.1", 50052):
        pytest.skip("127.0.0.1:50052 is taken by something else here")
    process = subprocess.Popen(["bash", "-c", f"{binaries.rpc_server} -p 50052"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_listening("127.0.0.1", 50052, process)
        yield
    finally:
        stop_group(process)


def test_a_bare_router_finds_both_kinds_of_backend(reader: Reader, worker_on_50052: None,
                                                   ) -> None:
    session = reader.run(Step("post_01_current_implementation.py", then=LOOK))
    session.expect("shards llama3.1:70b: True", "llama3.2: ollama-pool",
                   r"llama3\.1:70b: llama\.cpp-distributed over .*'127\.0\.0\.1', 'port': 50052.*")
