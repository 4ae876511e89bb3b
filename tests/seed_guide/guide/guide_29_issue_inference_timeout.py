# llama.cpp Model Sharding Guide, Troubleshooting > Issue: Inference Timeout
response = router.route_request(
    model="llama3.1:70b",
    messages=[...],
    timeout=600  # 10 minutes
)
