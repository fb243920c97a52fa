"""Do open WebSockets starve plain requests on a hot CPU? The issue-15 scenario, in a real cgroup.

One command (root; it creates a cgroup, so take the machine lock on a shared host)::

    flock /run/flowctl-machine.lock .venv/bin/python -m bench.sessions_starvation
    flock /run/flowctl-machine.lock .venv/bin/python -m bench.sessions_starvation --code /path/to/other/checkout

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

APP = r"""
import subprocess, sys
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
app.router.add_get("/burn", burn)
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


async def _state(session: aiohttp.ClientSession, base: str) -> dict[str, float | None]:
    async with session.get(base + "/metrics") as r:
        text = await r.text()
    return {
        "hot": _sample(text, "flowctl_hot"),
        "max_inflight": _sample(text, "flowctl_max_inflight"),
        "inflight_ws": _sample(text, "flowctl_inflight", resource="ws"),
        "sessions_active_ws": _sample(text, "flowctl_sessions_active", resource="ws"),
        "utilization": _sample(text, "flowctl_cpu_utilization_ratio", view="container"),
    }


async def run(code: str, websockets: int, cpus: float, settle_s: float) -> dict[str, Any]:
    from flowctl.workload import launch

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": code}
    result: dict[str, Any] = {"code": code, "cpus": cpus, "websockets": websockets}
    async with launch([sys.executable, "-c", APP, str(port)], cpus=cpus, env=env, cwd=code) as w:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(base + "/metrics") as r:
                        await r.read()
                    break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline or w.returncode is not None:
                        raise RuntimeError("the app did not come up") from None
                    await asyncio.sleep(0.1)
            result["warmup"] = await _answered(session, base, 20)

            await (await session.get(base + "/burn?on=1")).read()
            await asyncio.sleep(settle_s)
            result["without_websockets"] = await _answered(session, base, 40)
            result["without_websockets_state"] = await _state(session, base)
            await (await session.get(base + "/burn?on=0")).read()
            await asyncio.sleep(settle_s)

            socks = []
            opened: dict[str, int] = {}
            for _ in range(websockets):
                try:
                    socks.append(await session.ws_connect(base + "/ws"))
                    opened["101"] = opened.get("101", 0) + 1
                except aiohttp.WSServerHandshakeError as e:
                    opened[str(e.status)] = opened.get(str(e.status), 0) + 1
            result["websockets_opened"] = opened
            await (await session.get(base + "/burn?on=1")).read()
            await asyncio.sleep(settle_s)
            result["with_websockets"] = await _answered(session, base, 40)
            result["with_websockets_state"] = await _state(session, base)
            await (await session.get(base + "/burn?on=0")).read()
            for s in socks:
                await s.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sessions_starvation", description=__doc__.split("\n\n")[0])
    p.add_argument("--code", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="checkout whose flowctl the app imports (default: this one)")  # fmt: skip
    p.add_argument("--websockets", type=int, default=50)
    p.add_argument("--cpus", type=float, default=0.5)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after switching the burner")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = asyncio.run(run(args.code, args.websockets, args.cpus, args.settle))
    result["at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["loadavg"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
