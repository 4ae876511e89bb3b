# llama.cpp Model Sharding Guide, Advanced Topics > Layer Distribution Strategies
# Future feature
router = HybridRouter(
    enable_distributed=True,
    layer_strategy="memory_aware",  # Distribute based on VRAM
    # or "even" for equal distribution
)
