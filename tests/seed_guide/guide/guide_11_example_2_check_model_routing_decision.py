# llama.cpp Model Sharding Guide, Usage Examples > Example 2: Check Model Routing Decision
# Check which backend will be used before making request
model = "llama3.1:70b"
will_use_sharding = router.should_use_distributed(model)

if will_use_sharding:
    print(f"{model} will use distributed inference (llama.cpp)")
    print("Expected: Slower startup, network overhead")
else:
    print(f"{model} will use local Ollama")
    print("Expected: Fast, low latency")
