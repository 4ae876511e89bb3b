# llama.cpp Model Sharding Guide, Usage Examples > Example 5: Multi-Agent with Mixed Models
from sollol.sync_wrapper import HybridRouter, OllamaPool
from sollol.priority_helpers import get_priority_for_role

router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    num_rpc_backends=3
)

agents = [
    {"name": "Researcher", "role": "researcher", "model": "llama3.1:70b"},  # Sharded
    {"name": "Editor", "role": "editor", "model": "llama3.2"},              # Local
    {"name": "Summarizer", "role": "summarizer", "model": "llama3.2"},      # Local
]

for agent in agents:
    priority = get_priority_for_role(agent["role"])

    response = router.route_request(
        model=agent["model"],
        messages=[{"role": "user", "content": f"Task for {agent['name']}"}],
        priority=priority
    )

    backend = response.get('_routing', {}).get('backend', 'unknown')
    print(f"{agent['name']} ({agent['model']}): {backend}")
