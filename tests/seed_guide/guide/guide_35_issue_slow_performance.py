# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Slow Performance
# Fewer backends = fewer network hops
router = HybridRouter(num_rpc_backends=2)  # Instead of 4
