# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Slow Performance
ping -c 100 192.168.1.11
# Should be <10ms average
