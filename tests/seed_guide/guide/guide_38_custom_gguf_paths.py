# llama.cpp Model Sharding Guide, Advanced Topics > Custom GGUF Paths
from sollol import HybridRouter, OllamaPool

router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    gguf_path="/path/to/custom/model.gguf"
)
