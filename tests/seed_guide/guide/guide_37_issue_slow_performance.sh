# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Slow Performance
# Ensure all machines are on same LAN
# Avoid VPN or WAN connections
