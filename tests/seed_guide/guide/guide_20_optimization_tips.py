# llama.cpp Model Sharding Guide, Performance & Optimization > Optimization Tips
# Smaller context = faster inference
response = router.route_request(
    model="llama3.1:70b",
    messages=[...],
    max_tokens=512  # Limit response length
)
