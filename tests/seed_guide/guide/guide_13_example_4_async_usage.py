# llama.cpp Model Sharding Guide, Usage Examples > Example 4: Async Usage
import asyncio
from sollol import HybridRouter, OllamaPool

async def run_distributed_inference():
    # Create router (async version)
    pool = await OllamaPool.auto_configure()
    router = HybridRouter(
        ollama_pool=pool,
        enable_distributed=True,
        num_rpc_backends=3
    )

    # Run inference
    response = await router.route_request(
        model="llama3.1:70b",
        messages=[{"role": "user", "content": "What is AGI?"}]
    )

    print(response['message']['content'])

asyncio.run(run_distributed_inference())
