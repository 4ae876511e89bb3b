# llama.cpp Model Sharding Guide, Setup Guide > Option 2: Manual Setup
# Machine 1
~/llama.cpp/build/bin/rpc-server -H 0.0.0.0 -p 50052

# Machine 2
~/llama.cpp/build/bin/rpc-server -H 0.0.0.0 -p 50052

# Machine 3
~/llama.cpp/build/bin/rpc-server -H 0.0.0.0 -p 50052
