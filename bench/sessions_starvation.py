"""Do open WebSockets starve plain requests on a hot CPU? The issue-15 scenario, in a real cgroup.

One command (root; it creates a cgroup, so take the machine lock on a shared host)::

    flock /run/flowctl-machine.lock .venv/bin/python -m bench.sessions_starvation
    flock /run/flowctl-machine.lock .venv/bin/python -m bench.sessions_starvation --code /path/to/other/checkout
    flock /run/flowctl-machine.lock .venv/bin/python -m bench.sessions_starvation --sidecar

An aiohttp app (``/plain``, ``/ws``, ``flowctl.aiohttp.setup(app)`` with its
defaults: container CPU, BBR, loop lag) runs in a new 0.5-CPU cgroup
(``flowctl.workload.launch``), imported from ``--code`` (default: this
checkout). ``/burn`` (exempt from the limiter) starts or stops a CPU burner
process inside the same group. The client runs outside the group:

1. warm-up: 20 requests on a cool CPU;
2. burner on, 3 s for the smoothed signal to follow, then 40 plain requests
   one at a time: how many were answered;
3. burner off, 3 s, open ``--websockets`` idle WebSockets (cool CPU: all
   admitted), burner on, 3 s, the same 40 requests;
4. ``/metrics`` is read after each phase: in-flight, sessions, hot.

``--sidecar``: the app runs without flowctl, and the sidecar (``python -m
sidecar`` from ``--code``, outside the group, ``--watch pid:<app>``) is in
front of it; the long-lived sessions are ``--streams`` SSE streams
(``text/event-stream``) opened through it instead of WebSockets, and the
metrics are the sidecar's admin ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

APP = r"""
import asyncio, os, subprocess, sys
from aiohttp import web
import flowctl.aiohttp

burner = []

async def plain(request):
    return web.Response(text="ok")

async def ws(request):
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for _ in sock:
        pass
    return sock

async def events(request):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: hello\n\n")
    while True:
        await asyncio.sleep(3600)

async def burn(request):
    if request.query.get("on") == "1" and not burner:
        burner.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
    elif request.query.get("on") == "0":
        while burner:
            p = burner.pop()
            p.kill()
            p.wait()
    return web.Response(text=str(len(burner)))

app = web.Application()
app.router.add_get("/plain", plain, name="plain")
app.router.add_get("/ws", ws, name="ws")
app.router.add_get("/events", events, name="events")
app.router.add_get("/burn", burn)
if not os.environ.get("NO_FLOWCTL"):
    flowctl.aiohttp.setup(app, exempt_paths=("/healthz", "/metrics", "/burn"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            return float(m.group(2))
    return None


async def _answered(session: aiohttp.ClientSession, base: str, n: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for _ in range(n):
        async with session.get(base + "/plain") as r:
            await r.read()
            out[str(r.status)] = out.get(str(r.status), 0) + 1
    return out


async def _state(session: aiohttp.ClientSession, metrics_url: str, resource: str) -> dict[str, float | None]:
    async with session.get(metrics_url) as r:
        text = await r.text()
    return {
        "hot": _sample(text, "flowctl_hot"),
        "max_inflight": _sample(text, "flowctl_max_inflight"),
        "inflight": _sample(text, "flowctl_inflight", resource=resource),
        "sessions_active": _sample(text, "flowctl_sessions_active", resource=resource),
        "utilization": _sample(text, "flowctl_cpu_utilization_ratio", view="container"),
    }


async def _wait_up(session: aiohttp.ClientSession, url: str, alive: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with session.get(url) as r:
                await r.read()
                return
        except aiohttp.ClientError:
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"{url} did not come up") from None
            await asyncio.sleep(0.1)


async def _open_sessions(session: aiohttp.ClientSession, base: str, n: int, sse: bool) -> tuple[list[Any], dict[str, int]]:
    held: list[Any] = []
    opened: dict[str, int] = {}
    for _ in range(n):
        if sse:
            r = await session.get(base + "/events")
            if r.status == 200:
                await r.content.readany()  # the first event: the headers are out
                held.append(r)
            else:
                r.release()
            opened[str(r.status)] = opened.get(str(r.status), 0) + 1
            continue
        try:
            held.append(await session.ws_connect(base + "/ws"))
            opened["101"] = opened.get("101", 0) + 1
        except aiohttp.WSServerHandshakeError as e:
            opened[str(e.status)] = opened.get(str(e.status), 0) + 1
    return held, opened


async def run(code: str, sessions_n: int, cpus: float, settle_s: float, via_sidecar: bool) -> dict[str, Any]:
    from flowctl.workload import launch

    port = _free_port()
    app_base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": code}
    if via_sidecar:
        env["NO_FLOWCTL"] = "1"
    kind = "sse_streams" if via_sidecar else "websockets"
    result: dict[str, Any] = {"code": code, "cpus": cpus, kind: sessions_n, "via_sidecar": via_sidecar}
    sidecar: subprocess.Popen[bytes] | None = None
    async with launch([sys.executable, "-c", APP, str(port)], cpus=cpus, env=env, cwd=code) as w:
        try:
            async with aiohttp.ClientSession() as session:
                await _wait_up(session, app_base + "/plain", lambda: w.returncode is None)
                base, metrics_url, resource = app_base, app_base + "/metrics", "ws"
                if via_sidecar:
                    sp, admin = _free_port(), _free_port()
                    sidecar = subprocess.Popen(
                        [sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{sp}", "--admin", f"127.0.0.1:{admin}",
                         "--upstream", app_base, "--watch", f"pid:{w.pid}", "--log-level", "warning", "--drain-seconds", "1"],
                        cwd=code, env={**os.environ, "PYTHONPATH": code},
                    )  # fmt: skip
                    base, metrics_url, resource = f"http://127.0.0.1:{sp}", f"http://127.0.0.1:{admin}/metrics", "default"
                    await _wait_up(session, metrics_url, lambda: sidecar is not None and sidecar.poll() is None)
                result["warmup"] = await _answered(session, base, 20)

                await (await session.get(app_base + "/burn?on=1")).read()
                await asyncio.sleep(settle_s)
                result["without_sessions"] = await _answered(session, base, 40)
                result["without_sessions_state"] = await _state(session, metrics_url, resource)
                await (await session.get(app_base + "/burn?on=0")).read()
                await asyncio.sleep(settle_s)

                held, opened = await _open_sessions(session, base, sessions_n, via_sidecar)
                result["sessions_opened"] = opened
                await (await session.get(app_base + "/burn?on=1")).read()
                await asyncio.sleep(settle_s)
                result["with_sessions"] = await _answered(session, base, 40)
                result["with_sessions_state"] = await _state(session, metrics_url, resource)
                await (await session.get(app_base + "/burn?on=0")).read()
                for h in held:
                    if via_sidecar:
                        h.release()
                    else:
                        await h.close()
        finally:
            if sidecar is not None:
                sidecar.terminate()
                try:
                    sidecar.wait(30)
                except subprocess.TimeoutExpired:
                    sidecar.kill()
                    sidecar.wait()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sessions_starvation", description=__doc__.split("\n\n")[0])
    p.add_argument("--code", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="checkout whose flowctl the app imports (default: this one)")  # fmt: skip
    p.add_argument("--websockets", type=int, default=50)
    p.add_argument("--sidecar", action="store_true", help="SSE streams through the sidecar instead (see above)")
    p.add_argument("--streams", type=int, default=30, help="SSE streams with --sidecar")
    p.add_argument("--cpus", type=float, default=0.5)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after switching the burner")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    n = args.streams if args.sidecar else args.websockets
    result = asyncio.run(run(args.code, n, args.cpus, args.settle, args.sidecar))
    result["at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["loadavg"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
