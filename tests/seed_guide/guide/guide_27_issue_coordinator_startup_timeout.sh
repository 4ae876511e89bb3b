# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Coordinator Startup Timeout
# View llama-server output
tail -f /tmp/llama_coordinator_*.log
