# llama.cpp Model Sharding Guide, Overview > What You Get
from sollol.sync_wrapper import HybridRouter, OllamaPool

# Auto-configure with model sharding enabled
router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    num_rpc_backends=3  # Shard across 3 machines
)

# Small models → Ollama (fast, local)
response = router.route_request(
    model="llama3.2",
    messages=[{"role": "user", "content": "Hello!"}]
)

# Large models → llama.cpp sharding (distributed)
response = router.route_request(
    model="llama3.1:70b",
    messages=[{"role": "user", "content": "Complex task..."}]
)
