# llama.cpp Model Sharding Guide, Advanced Topics > Monitoring & Metrics
stats = router.get_stats()

print(f"Distributed requests: {stats.get('distributed_requests', 0)}")
print(f"Coordinator uptime: {stats.get('coordinator_uptime_seconds', 0)}s")
print(f"Active RPC backends: {stats.get('active_rpc_backends', 0)}")
