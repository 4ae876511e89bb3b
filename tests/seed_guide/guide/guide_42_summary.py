# llama.cpp Model Sharding Guide, Summary
from sollol.sync_wrapper import HybridRouter, OllamaPool

router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    auto_setup_rpc=True,
    num_rpc_backends=3
)

# Just use it - SOLLOL handles the rest
response = router.route_request(
    model="llama3.1:70b",
    messages=[{"role": "user", "content": "Hello!"}]
)
