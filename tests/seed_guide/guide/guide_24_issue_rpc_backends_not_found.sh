# llama.cpp Model Sharding Guide, Troubleshooting > Issue: RPC Backends Not Found
# Test port accessibility
nc -zv 192.168.1.10 50052

# Check firewall
sudo ufw allow 50052
