# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Coordinator Startup Timeout
router = HybridRouter(
    enable_distributed=True,
    coordinator_timeout=1200,  # 20 minutes for 70B models
    num_rpc_backends=3
)
