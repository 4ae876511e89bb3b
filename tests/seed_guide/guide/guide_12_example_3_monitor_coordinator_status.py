# llama.cpp Model Sharding Guide, Usage Examples > Example 3: Monitor Coordinator Status
# Get coordinator information
if router.coordinator:
    print(f"Coordinator running: {router.coordinator.is_running()}")
    print(f"Coordinator model: {router.coordinator_model}")
    print(f"RPC backends: {len(router.coordinator.rpc_backends)}")
    print(f"Coordinator URL: {router.coordinator.base_url}")
else:
    print("No coordinator active (using Ollama only)")
