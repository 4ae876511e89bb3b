# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Coordinator Crashes After First Request
# Check system logs
dmesg | grep -i "out of memory"
journalctl -xe | grep llama
