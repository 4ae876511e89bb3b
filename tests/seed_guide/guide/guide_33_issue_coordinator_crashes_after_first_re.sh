# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Coordinator Crashes After First Request
# Give coordinator more memory
export LLAMA_ARG_N_GPU_LAYERS=40
