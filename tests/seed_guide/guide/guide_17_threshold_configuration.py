# llama.cpp Model Sharding Guide, Model Profiles > Threshold Configuration
router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    distributed_threshold_params=30,  # Shard models > 30B parameters
    num_rpc_backends=3
)
