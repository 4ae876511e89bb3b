# llama.cpp Model Sharding Guide, Setup Guide > Option 2: Manual Setup
from sollol.sync_wrapper import HybridRouter, OllamaPool

# Manual RPC backend configuration
router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    rpc_backends=[
        {"host": "192.168.1.10", "port": 50052},
        {"host": "192.168.1.11", "port": 50052},
        {"host": "192.168.1.12", "port": 50052},
    ]
)
