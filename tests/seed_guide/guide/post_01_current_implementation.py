# SOLLOL post, Description > Context > Current Implementation
# Hybrid router supporting both backend types
from sollol import HybridRouter

router = HybridRouter()
# Auto-discovers llama.cpp RPC backends on port 50052
# Auto-discovers Ollama nodes on port 11434

# Routes to appropriate backend based on task
# - Model sharding: llama.cpp RPC
# - Embeddings: Ollama (faster)
# - Large models: llama.cpp RPC with sharding
