"""nginx (Debian package) as a reverse proxy with a static ``limit_conn``: the step scenario's peer.

``limit_conn`` caps concurrent requests per key; past it nginx answers
``limit_conn_status`` (503) at once. Tuned to a capacity, it is the best a
static configuration can do; it stays tuned to the old capacity when the
quota changes. One worker, no access log, pinned to the auxiliary CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator

__all__ = ["nginx_binary", "render_conf", "run_nginx"]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin")


def render_conf(*, prefix: str, port: int, upstream: str, limit_conn: int, cpu: int | None) -> str:
    """An nginx.conf proxying ``127.0.0.1:port`` to ``upstream`` (host:port) with ``limit_conn``."""
    affinity = f"worker_cpu_affinity {'1' + '0' * cpu};" if cpu is not None else ""  # bit N = CPU N
    return f"""
worker_processes 1;
{affinity}
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    limit_conn_zone $server_name zone=perserver:1m;
    upstream app {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name bench;
        location = /healthz {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location / {{
            limit_conn perserver {limit_conn};
            limit_conn_status 503;
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@contextlib.asynccontextmanager
async def run_nginx(port: int, upstream: str, limit_conn: int, *, cpu: int | None = None) -> AsyncIterator[str]:
    """Run nginx in the foreground on ``127.0.0.1:port``; yield its base URL; stop and wait for it."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not found (apt-get install -y nginx)")
    prefix = tempfile.mkdtemp(prefix="flowctl-nginx-")
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(render_conf(prefix=prefix, port=port, upstream=upstream, limit_conn=limit_conn, cpu=cpu))
    proc = await asyncio.create_subprocess_exec(binary, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()  # SIGTERM = fast shutdown
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(prefix, ignore_errors=True)

