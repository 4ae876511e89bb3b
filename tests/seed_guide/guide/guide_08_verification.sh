# llama.cpp Model Sharding Guide, Setup Guide > Verification
# Test RPC connectivity
nc -zv 192.168.1.10 50052
nc -zv 192.168.1.11 50052
nc -zv 192.168.1.12 50052
