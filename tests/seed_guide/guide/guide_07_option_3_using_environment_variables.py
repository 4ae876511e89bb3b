# llama.cpp Model Sharding Guide, Setup Guide > Option 3: Using Environment Variables
# HybridRouter will pick up RPC_BACKENDS automatically
router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True
)
