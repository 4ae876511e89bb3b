"""The guide's "Advanced Topics" (custom GGUF paths) and its "Quick Start" summary."""

from __future__ import annotations

from .conftest import Reader, Step

USE_CUSTOM = """import asyncio

HI = [{"role": "user", "content": "Hi"}]

async def use_it():
    mine = await router.route_request(model="my-finetune", messages=HI)
    print(f"my-finetune: {mine['_routing']['backend']}")
    # a model the Ollama node has runs there; never from the custom file under its name
    theirs = await router.route_request(model="llama3.2", messages=HI)
    print(f"llama3.2: {theirs['_routing']['backend']}")

asyncio.run(use_it())
"""


def test_custom_gguf_paths(reader: Reader, rpc_backends_exported: dict[str, str]) -> None:
    session = reader.run(Step("guide_38_custom_gguf_paths.py", then=USE_CUSTOM),
                         environ=rpc_backends_exported)
    session.expect("my-finetune: llama.cpp-distributed", "llama3.2: ollama-pool")


def test_quick_start_sets_everything_up(reader: Reader) -> None:
    """No RPC server is known: the quick start's auto-setup starts three and shards over them."""
    session = reader.run(Step(
        "guide_42_summary.py",
        then="print(response['_routing']['backend'], len(router.coordinator.rpc_backends))\n"
             "print(response['message']['content'])\n"))
    session.expect("llama.cpp-distributed 3", ".+")


def test_troubleshootings_auto_setup_without_a_pool(reader: Reader) -> None:
    """"Enable auto-setup" builds the router with no ``ollama_pool``: it makes its own."""
    session = reader.run(
        Step("guide_05_option_2_manual_setup.py"),  # the imports it uses
        Step("guide_25_issue_rpc_backends_not_found.py",
             then="for model in ('llama3.1:70b', 'llama3.2'):\n"
                  "    response = router.route_request(model=model, messages=[\n"
                  "        {'role': 'user', 'content': 'Hello!'}])\n"
                  "    print(f\"{model}: {response['_routing']['backend']}\")\n"))
    session.expect("llama3.1:70b: llama.cpp-distributed", "llama3.2: ollama-pool")
