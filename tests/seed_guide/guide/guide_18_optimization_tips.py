# llama.cpp Model Sharding Guide, Performance & Optimization > Optimization Tips
# Good: 2-3 backends (fewer network hops)
router = HybridRouter(num_rpc_backends=2)

# Avoid: 5+ backends (too many hops)
router = HybridRouter(num_rpc_backends=6)
