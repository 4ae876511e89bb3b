# llama.cpp Model Sharding Guide, Setup Guide > Option 1: Auto-Setup (Recommended)
from sollol.sync_wrapper import HybridRouter, OllamaPool

# Auto-setup everything
router = HybridRouter(
    ollama_pool=OllamaPool.auto_configure(),
    enable_distributed=True,
    auto_discover_rpc=True,    # Try to find existing RPC servers
    auto_setup_rpc=True,        # Build/start RPC if not found
    num_rpc_backends=3          # Number of RPC servers to start
)

# SOLLOL will:
# 1. Look for running RPC servers on the network
# 2. If not found, clone llama.cpp repository
# 3. Build llama.cpp with RPC support
# 4. Start RPC servers on available ports
# 5. Configure HybridRouter to use them
