# llama.cpp Model Sharding Guide, Troubleshooting > Issue: RPC Backends Not Found
router = HybridRouter(
    enable_distributed=True,
    auto_setup_rpc=True,  # Let SOLLOL build/start RPC servers
    num_rpc_backends=3
)
