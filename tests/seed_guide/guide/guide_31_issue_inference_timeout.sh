# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Inference Timeout
# Check RPC backend logs
# Look for layer assignment messages
