"""The HTTP gateway (aiohttp): SOLLOL's own endpoints here; the Ollama and OpenAI APIs join it."""
