"""The upstream pool under faults, through a real sidecar on real sockets.

The upstream restarts, resets mid-response, closes idle keep-alive connections just as
they are reused, and answers slowly. Whatever happens: no exception escapes to the event
loop, clients get 200, 502 (refused or broken upstream) or 504 (upstream timeout), in-flight
returns to 0 and the pool's connection count returns to 0 once the upstream is gone.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import struct
from typing import Any

import aiohttp
import pytest

from sidecar.upstream import UpstreamConnectError, UpstreamPool, _Connection
from bench.ports import free_port
from tests.sidecar.conftest import MakeSidecar, config_for, url

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed or restarted upstream does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultyUpstream:
    """A raw HTTP/1.1 server on a fixed port; the path picks the fault; ``restart()`` rebinds."""

    def __init__(self, port: int, slow_s: float) -> None:
        self.port = port
        self.slow_s = slow_s
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                _rst(w)
            await self.server.wait_closed()
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await asyncio.sleep(0.05)  # a real gap in which connects are refused
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/reset-mid":
                    writer.write(OK[:30])
                    await writer.drain()
                    _rst(writer)
                    return
                if path == b"/reset-before":
                    _rst(writer)
                    return
                if path == b"/slow":
                    await asyncio.sleep(self.slow_s)
                writer.write(OK)
                await writer.drain()
                if path == b"/close-idle":
                    # Keep-alive by the headers, then gone: the next request on it meets a dead socket.
                    _rst(writer)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


async def test_pool_survives_restarts_resets_idle_closes_and_slow_answers(make_sidecar: MakeSidecar) -> None:
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
    up = FaultyUpstream(free_port(), slow_s=1.0)
    await up.start()
    try:
        sc = await make_sidecar(
            config_for(f"http://127.0.0.1:{up.port}", read_timeout_s=0.3, connect_timeout_s=1.0,
                       max_connections=32, upstream_keepalive_s=30.0),
            limit=False,
        )  # fmt: skip
        assert sc.proxy is not None
        paths = ["/ok"] * 6 + ["/close-idle"] * 4 + ["/reset-mid", "/reset-before", "/slow"]
        rng = random.Random(16)
        statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        bodies: list[bytes] = []

        async def client(n: int) -> None:
            async with aiohttp.ClientSession() as s:
                for _ in range(n):
                    path = rng.choice(paths)
                    async with s.get(url(sc, path)) as r:
                        body = await r.read()
                        statuses[path][r.status] += 1
                        if r.status != 200:
                            bodies.append(body)

        async def restarter() -> None:
            for _ in range(5):
                await asyncio.sleep(0.2)
                await up.restart()

        # Phase 1: every fault at once, and the upstream restarts five times underneath.
        await asyncio.gather(*(client(40) for _ in range(24)), restarter())
        assert sc.proxy.inflight == 0
        everything = collections.Counter[int]()
        for c in statuses.values():
            everything.update(c)
        assert set(everything) <= {200, 502, 504}, statuses
        print(f"\nwith restarts: {dict(everything)}")
        # Phase 2: no restarts, so each fault maps to its documented status alone.
        statuses.clear()
        await asyncio.gather(*(client(40) for _ in range(24)))
        assert sc.proxy.inflight == 0
        print(f"without restarts: { {p: dict(c) for p, c in statuses.items()} }")
        assert set(statuses["/ok"]) == {200}, statuses
        assert set(statuses["/close-idle"]) == {200}, statuses  # the reused dead connection is retried
        assert set(statuses["/reset-mid"]) == {502}, statuses  # a response cut before its body ended
        assert set(statuses["/reset-before"]) == {502}, statuses
        assert set(statuses["/slow"]) == {504}, statuses  # read timeout 0.3 s < 1 s
        assert all(b.startswith(b"{") and len(b) < 300 for b in bodies)  # the documented JSON error
        pool = sc.proxy._pool  # noqa: SLF001
        assert pool is not None
        await up.stop()  # every upstream connection is now reset: the pool's count must reach 0
        for _ in range(200):
            if pool.open_connections == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.open_connections == 0, pool.open_connections
        assert escaped == []
    finally:
        loop.set_exception_handler(None)
        await up.stop()


async def test_a_connection_closed_before_connection_made_is_a_connect_error() -> None:
    """The ``assert transport is not None`` race: a protocol whose connection_made never ran.

    uvloop skips ``connection_made`` (and later ``connection_lost``) when the transport is
    closed between the connect and that callback, and still returns the protocol. The pool
    must treat that as a failed connect and keep its count of open connections right.
    """
    port = free_port()
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _r, w: accepted.append(w), "127.0.0.1", port)
    pool = UpstreamPool("127.0.0.1", port, limit=2, connect_timeout_s=1.0)
    loop = asyncio.get_running_loop()
    real = loop.create_connection

    class NeverMade(_Connection):
        """What uvloop does for a transport closed before its connection_made ran: neither callback."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            pass

        def connection_lost(self, exc: Exception | None) -> None:
            pass

    async def connect_then_lose(factory: Any, *args: Any, **kw: Any) -> Any:
        return await real(lambda: NeverMade(factory().pool), *args, **kw)

    loop.create_connection = connect_then_lose  # type: ignore[method-assign,assignment]
    try:
        for _ in range(3):  # more than the limit: a leaked count would make the third wait, then time out
            with pytest.raises(UpstreamConnectError):
                await pool.request("GET", "/", [("Host", "x")])
        assert pool.open_connections == 0
    finally:
        del loop.create_connection
        await pool.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
