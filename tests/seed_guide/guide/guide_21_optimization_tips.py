# llama.cpp Model Sharding Guide, Performance & Optimization > Optimization Tips
# Coordinator stays loaded between requests
# Subsequent requests are much faster

# First request: 2-5 min (startup + inference)
response1 = router.route_request(model="llama3.1:70b", messages=[...])

# Second request: <1 min (inference only)
response2 = router.route_request(model="llama3.1:70b", messages=[...])
