# llama.cpp Model Sharding Guide, Performance & Optimization > Optimization Tips
response = router.route_request(
    model="llama3.1:70b",
    messages=[...]
)

# Check routing metadata
routing = response.get('_routing', {})
print(f"Backend: {routing.get('backend')}")
print(f"Duration: {routing.get('duration_ms')}ms")
print(f"Coordinator: {routing.get('coordinator_url')}")
