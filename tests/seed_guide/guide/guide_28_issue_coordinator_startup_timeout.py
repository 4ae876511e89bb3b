# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Coordinator Startup Timeout
from sollol.ollama_gguf_resolver import OllamaGGUFResolver

resolver = OllamaGGUFResolver()
gguf_path = resolver.get_gguf_path("llama3.1:70b")
print(f"GGUF: {gguf_path}")

# Should print path like:
# /usr/share/ollama/.ollama/models/blobs/sha256-abc123...
