"""``sollol agent``: a small daemon per machine that serves this machine's telemetry and lets a
router manage processes here (the llamacpp plugin's RPC workers), and the router's client for it.

- :mod:`sollol_core.agent.app`: the aiohttp application (browser checks, token check,
  ``/v1/telemetry``, the routes plugins add through ``sollol_agent_app``);
- :mod:`sollol_core.agent.serve`: run it until SIGINT or SIGTERM, refusing unsafe addresses;
- :mod:`sollol_core.agent.token`: the token both sides use (configured, else the token file);
- :mod:`sollol_core.agent.client`: what a router uses to talk to agents.
"""
