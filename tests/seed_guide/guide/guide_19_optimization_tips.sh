# llama.cpp Model Sharding Guide, Performance & Optimization > Optimization Tips
# Check network latency between machines
ping -c 10 192.168.1.11

# Ensure <10ms latency for good performance
