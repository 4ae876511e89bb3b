"""SOLLOL telemetry plugin: CPU, RAM and inference-process memory of this machine (psutil)."""
