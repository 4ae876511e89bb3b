# llama.cpp Model Sharding Guide, Advanced Topics > Multiple Coordinators
# Not currently supported - coordinators are per-HybridRouter
# Workaround: Use separate HybridRouter instances

router_70b = HybridRouter(
    enable_distributed=True,
    model_filter=["llama3.1:70b"]
)

router_405b = HybridRouter(
    enable_distributed=True,
    model_filter=["llama3.1:405b"]
)
