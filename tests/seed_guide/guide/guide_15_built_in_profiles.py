# llama.cpp Model Sharding Guide, Model Profiles > Built-in Profiles
MODEL_PROFILES = {
    # Small models - Ollama
    "llama3.2": {
        "parameter_count": 3,
        "estimated_memory_gb": 2,
        "requires_distributed": False
    },
    "phi": {
        "parameter_count": 3,
        "estimated_memory_gb": 1.5,
        "requires_distributed": False
    },

    # Medium models - Ollama (if fits)
    "llama3.1:8b": {
        "parameter_count": 8,
        "estimated_memory_gb": 5,
        "requires_distributed": False
    },
    "codellama:13b": {
        "parameter_count": 13,
        "estimated_memory_gb": 8,
        "requires_distributed": False
    },

    # Large models - llama.cpp sharding
    "llama3.1:70b": {
        "parameter_count": 70,
        "estimated_memory_gb": 40,
        "requires_distributed": True
    },
    "llama3.1:405b": {
        "parameter_count": 405,
        "estimated_memory_gb": 240,
        "requires_distributed": True
    },
    "mixtral:8x7b": {
        "parameter_count": 47,  # MoE model
        "estimated_memory_gb": 26,
        "requires_distributed": True
    }
}
