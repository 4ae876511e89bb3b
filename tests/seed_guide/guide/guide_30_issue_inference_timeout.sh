# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Inference Timeout
# Test coordinator health
curl http://localhost:18080/health
