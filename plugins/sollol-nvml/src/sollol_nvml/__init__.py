"""SOLLOL telemetry plugin: this machine's NVIDIA GPUs and the GPU memory of inference processes."""
