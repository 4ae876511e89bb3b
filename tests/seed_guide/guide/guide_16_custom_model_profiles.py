# llama.cpp Model Sharding Guide, Model Profiles > Custom Model Profiles
from sollol.hybrid_router import MODEL_PROFILES

# Add custom model
MODEL_PROFILES["custom-70b"] = {
    "parameter_count": 70,
    "estimated_memory_gb": 42,
    "requires_distributed": True
}

# Now SOLLOL will route it to llama.cpp automatically
router.route_request(
    model="custom-70b",
    messages=[...]
)
