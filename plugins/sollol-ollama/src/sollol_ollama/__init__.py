"""SOLLOL's Ollama backend: finds Ollama nodes, probes them, runs requests on them.

``sollol_ollama.testing`` ships a protocol-faithful Ollama emulator for plugin authors' tests.
"""
