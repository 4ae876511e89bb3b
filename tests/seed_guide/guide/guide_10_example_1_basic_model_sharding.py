# llama.cpp Model Sharding Guide, Usage Examples > Example 1: Basic Model Sharding
from sollol.sync_wrapper import HybridRouter, OllamaPool
from sollol.priority_helpers import Priority

# Setup router with model sharding
router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    num_rpc_backends=3
)

# Small model - uses Ollama (fast)
print("Running small model...")
response = router.route_request(
    model="llama3.2",
    messages=[{"role": "user", "content": "Hello!"}],
    priority=Priority.HIGH
)
print(f"Backend: {response.get('_routing', {}).get('backend')}")
# Output: Backend: ollama-pool

# Large model - uses llama.cpp sharding (distributed)
print("\nRunning large model...")
response = router.route_request(
    model="llama3.1:70b",
    messages=[{"role": "user", "content": "Explain quantum computing"}],
    priority=Priority.NORMAL
)
print(f"Backend: {response.get('_routing', {}).get('backend')}")
# Output: Backend: llama.cpp-distributed
