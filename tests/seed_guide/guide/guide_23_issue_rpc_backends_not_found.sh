# llama.cpp Model Sharding Guide, Troubleshooting > Issue: RPC Backends Not Found
# List running RPC servers
ps aux | grep rpc-server

# Should show:
# ./build/bin/rpc-server -H 0.0.0.0 -p 50052
