"""Time to first byte of a slow small body: direct vs through the sidecar, on both upstream clients.

One command::

    .venv/bin/python -m bench.stream_ttfb                 # ~30 s
    .venv/bin/python -m bench.stream_ttfb --rounds 5 --json /tmp/ttfb.json

The upstream (in-process aiohttp on loopback) answers ``/drip`` like
httpbin's ``/drip?duration=2&numbytes=4``: a ``Content-Length: 4`` head with
the first byte, then one byte every ``--pause`` seconds. The client (aiohttp)
records when the status and headers arrived, when the first body byte did,
and when the body ended, relative to sending the request. Targets alternate
per round (direct, sidecar with ``--client fast``, sidecar with ``--client
aiohttp``); medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import HostPort, SidecarConfig


def _upstream(pause_s: float) -> web.Application:
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "4", "Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await resp.write(b"a")
        for b in (b"b", b"c", b"d"):
            await asyncio.sleep(pause_s)
            await resp.write(b)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/drip", drip)
    return app


async def _one(session: aiohttp.ClientSession, target: str) -> dict[str, float]:
    t0 = time.perf_counter()
    async with session.get(target) as r:
        t_head = time.perf_counter()
        first = await r.content.readany()
        t_first = time.perf_counter()
        rest = await r.content.read()
        t_end = time.perf_counter()
    assert r.status == 200 and first + rest == b"abcd", (r.status, first, rest)
    return {"head_s": t_head - t0, "first_byte_s": t_first - t0, "body_s": t_end - t0}


async def run(rounds: int, pause_s: float) -> dict[str, Any]:
    runner = web.AppRunner(_upstream(pause_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    sidecars: dict[str, Sidecar] = {}
    try:
        for client in ("fast", "aiohttp"):
            cfg = SidecarConfig(client=client, listen=HostPort("127.0.0.1", 0), admin=HostPort("127.0.0.1", 0), upstream=up)
            sc = Sidecar(cfg, limit=False)
            await sc.start()
            sidecars[client] = sc
        targets = {"direct": up + "/drip"}
        targets.update({f"sidecar_{c}": f"http://127.0.0.1:{sc.listen_port}/drip" for c, sc in sidecars.items()})
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        async with aiohttp.ClientSession() as session:
            for _ in range(rounds):
                for name, target in targets.items():
                    samples[name].append(await _one(session, target))
    finally:
        for sc in sidecars.values():
            await sc.stop()
        await runner.cleanup()
    medians = {
        name: {k: round(statistics.median(s[k] for s in rows), 4) for k in ("head_s", "first_byte_s", "body_s")}
        for name, rows in samples.items()
    }
    return {
        "command": "python -m bench.stream_ttfb " + " ".join(sys.argv[1:]),
        "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": os.getloadavg(),
        "rounds": rounds,
        "pause_s": pause_s,
        "medians": medians,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_ttfb", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pause", type=float, default=0.5, help="seconds between the dripped bytes")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = asyncio.run(run(args.rounds, args.pause))
    print(f"{'target':<16}{'headers s':>12}{'first byte s':>14}{'body s':>10}")
    for name, m in result["medians"].items():
        print(f"{name:<16}{m['head_s']:>12.4f}{m['first_byte_s']:>14.4f}{m['body_s']:>10.4f}")
    print(f"loadavg {result['loadavg'][0]:.2f}; {result['rounds']} rounds; {result['at_utc']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
