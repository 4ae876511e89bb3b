"""The reference proxies the gateway benchmark measures SOLLOL against.

* ``aiohttp-proxy``: the least a Python proxy on aiohttp can do. It reads the client's body,
  sends it to the one node over a pooled ``aiohttp.ClientSession`` and relays the node's bytes
  as they come: no parsing, no routing, no checks, no bookkeeping. What it costs per request is
  the floor for any gateway written on aiohttp, SOLLOL included.
* ``nginx`` (when installed: Debian's ``nginx-light`` or ``nginx``): one worker, a keep-alive
  upstream, buffering off so streamed lines pass at once: what ``least_conn`` users run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

_SESSION = web.AppKey("session", aiohttp.ClientSession)
#: Hop-by-hop and framing headers are the proxy's own business, not relayed.
_RELAYED_HEADERS = ("Content-Type",)


def aiohttp_proxy(upstream: str) -> web.Application:
    """An application that relays every POST to ``http://upstream`` unchanged."""
    app = web.Application()

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
            app[_SESSION] = client
            yield

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k in _RELAYED_HEADERS if (v := request.headers.get(k))}
        async with app[_SESSION].post(f"http://{upstream}{request.path}", data=body,
                                      headers=headers) as answer:
            relayed = {k: v for k in _RELAYED_HEADERS if (v := answer.headers.get(k))}
            if answer.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return web.Response(status=answer.status, body=await answer.read(),
                                    headers=relayed)
            response = web.StreamResponse(status=answer.status, headers=relayed)
            await response.prepare(request)
            async for data in answer.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session)
    app.router.add_post("/{path:.*}", relay)
    return app


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


_NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream node {{ server {upstream}; keepalive 128; }}
  server {{
    listen {host}:{port};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def start_nginx(binary: str, upstream: str, host: str) -> tuple[subprocess.Popen[bytes], str,
                                                                  Path]:
    """nginx in front of ``upstream`` on a free port: (process, its URL, its folder)."""
    prefix = Path(tempfile.mkdtemp(prefix="sollol-bench-nginx-"))
    with socket.socket() as probe:  # a free port (nginx cannot report the one it bound)
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(prefix=prefix, upstream=upstream, host=host, port=port))
    process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {process.stderr.read().decode()[-500:]}"
                               if process.stderr else "nginx exited")
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return process, f"http://{host}:{port}", prefix
        time.sleep(0.05)
    stop_nginx(process, prefix)
    raise RuntimeError("nginx did not start listening within 10 s")


def stop_nginx(process: subprocess.Popen[bytes], prefix: Path) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr:
        process.stderr.close()
    shutil.rmtree(prefix, ignore_errors=True)
