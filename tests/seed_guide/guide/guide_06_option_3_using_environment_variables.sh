# llama.cpp Model Sharding Guide, Setup Guide > Option 3: Using Environment Variables
# Set RPC backends via environment
export RPC_BACKENDS="192.168.1.10:50052,192.168.1.11:50052,192.168.1.12:50052"

# Run SOLLOL gateway
python -m sollol.gateway
