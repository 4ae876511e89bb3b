# llama.cpp Model Sharding Guide, Setup Guide > Verification
# Verify in Python
from sollol.rpc_discovery import test_rpc_backend

result = test_rpc_backend("192.168.1.10", 50052)
print(f"RPC backend: {'✓ Available' if result else '✗ Not available'}")
