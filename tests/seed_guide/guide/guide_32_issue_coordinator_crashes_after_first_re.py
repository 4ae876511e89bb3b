# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Coordinator Crashes After First Request
# SOLLOL should detect dead processes
# Look for: "⚠️  Coordinator process died!"
