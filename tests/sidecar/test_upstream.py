"""The lean upstream client against hand-written HTTP/1.x servers (framing, keep-alive, retries, limits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar.upstream import UpstreamConnectError, UpstreamError, UpstreamPool, UpstreamTimeout
from bench.ports import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            head += await reader.readexactly(int(line.split(b":")[1]))
    return head


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.concurrent -= 1
            writer.close()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def keep_alive(response: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(response)
            await writer.drain()

    return handle


async def _pool(port: int, **kw: float) -> UpstreamPool:
    return UpstreamPool("127.0.0.1", port, **kw)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection() -> None:
    async with RawServer(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok")) as srv:
        pool = await _pool(srv.port)
        for _ in range(20):
            r = await pool.request("GET", "/", [("Host", "x")])
            assert r.status == 200 and r.headers == [("Content-Length", "2"), ("X-A", "1")]
            assert await r.read() == b"ok"
        assert srv.connections == 1 and pool.connections_made == 1
        await pool.close()


async def test_stale_keep_alive_connection_is_retried_once() -> None:
    """The upstream drops an idle keep-alive connection just as the next request arrives."""

    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the second request on this connection: drop it unanswered

    async with RawServer(one_per_connection) as srv:
        pool = await _pool(srv.port)
        for _ in range(3):
            r = await pool.request("GET", "/", [])
            assert await r.read() == b"ok"
        assert srv.connections >= 2
        # a streamed (not replayable) body is not retried
        r = await pool.request("GET", "/", [])
        await r.read()

        async def body() -> AsyncIterator[bytes]:
            yield b"abc"

        with pytest.raises(UpstreamError):
            await pool.request("POST", "/", [], body())
        await pool.close()


async def test_pool_limit_bounds_connections() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with RawServer(slow) as srv:
        pool = await _pool(srv.port, limit=2)

        async def one() -> int:
            r = await pool.request("GET", "/", [])
            await r.read()
            return r.status

        assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
        assert srv.max_concurrent <= 2 and pool.connections_made <= 2
        await pool.close()


async def test_interim_1xx_is_skipped_and_close_delimited_body_is_read() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nX-B: 2\r\n\r\nuntil")
        await writer.drain()
        writer.write(b" close")
        await writer.drain()

    async with RawServer(handle) as srv:
        pool = await _pool(srv.port)
        r = await pool.request("POST", "/", [], b"data")
        assert r.status == 200 and r.content_length is None and r.headers == [("X-B", "2")]
        assert await r.read() == b"until close"
        await pool.close()


async def test_chunked_with_extensions_and_trailers() -> None:
    resp = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawServer(keep_alive(resp)) as srv:
        pool = await _pool(srv.port)
        for _ in range(2):
            r = await pool.request("GET", "/", [])
            assert await r.read() == b"hello world"
        assert pool.connections_made == 1  # the connection stays usable after trailers
        await pool.close()


async def test_head_response_has_no_body_even_with_length() -> None:
    async with RawServer(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")) as srv:
        pool = await _pool(srv.port)
        for _ in range(2):
            r = await pool.request("HEAD", "/", [])
            assert r.headers == [("Content-Length", "1000")] and await r.read() == b""
        assert pool.connections_made == 1
        await pool.close()


async def test_streamed_request_body_is_chunked_or_sized() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"chunked" in head:
            seen.append(head + await reader.readuntil(b"0\r\n\r\n"))
        else:
            seen.append(head + await reader.readexactly(6))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"def"

    async with RawServer(handle) as srv:
        pool = await _pool(srv.port)
        r = await pool.request("PUT", "/", [], body())
        assert r.status == 204 and await r.read() == b""
        r = await pool.request("PUT", "/", [], body(), content_length=6)
        await r.read()
        await pool.close()
    assert seen[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert seen[1].endswith(b"Content-Length: 6\r\n\r\nabcdef")


@pytest.mark.parametrize(
    "raw",
    [b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 2xx OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
    ids=["not-http", "bad-status", "no-colon", "two-lengths", "bad-chunk", "cut-body"],
)  # fmt: skip
async def test_malformed_responses_raise_upstream_error(raw: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    async with RawServer(handle) as srv:
        pool = await _pool(srv.port)
        with pytest.raises(UpstreamError):
            r = await pool.request("GET", "/", [])
            await r.read()
        await pool.close()


async def test_read_timeout_and_refused() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with RawServer(silent) as srv:
        pool = await _pool(srv.port, read_timeout_s=0.1)
        with pytest.raises(UpstreamTimeout):
            await pool.request("GET", "/", [])
        await pool.close()
    pool = await _pool(free_port())
    with pytest.raises(UpstreamConnectError):
        await pool.request("GET", "/", [])
    assert pool.open_connections == 0


async def test_large_body_is_flow_controlled() -> None:
    n = 8 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        block = b"x" * 65536
        for _ in range(n // len(block)):
            writer.write(block)
            await writer.drain()

    async with RawServer(big) as srv:
        pool = await _pool(srv.port)
        r = await pool.request("GET", "/", [])
        await asyncio.sleep(0.3)  # a slow consumer: the client must stop reading the socket
        conn = r._conn
        assert conn is not None and conn.paused and conn.body_bytes < 2 * 1024 * 1024
        got = 0
        while chunk := await r.read_chunk():
            got += len(chunk)
        assert got == n
        await pool.close()


async def test_bytes_after_a_complete_response_stop_reuse() -> None:
    async with RawServer(keep_alive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")) as srv:
        pool = await _pool(srv.port)
        for _ in range(2):
            r = await pool.request("GET", "/", [])
            assert await r.read() == b"ok"
        assert pool.connections_made == 2  # the first connection was not trusted again
        await pool.close()


async def test_unsolicited_bytes_on_an_idle_connection_close_it() -> None:
    """Servers send e.g. a 408 on an idle keep-alive connection before closing it."""

    async def then_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with RawServer(then_408) as srv:
        pool = await _pool(srv.port)
        r = await pool.request("GET", "/", [])
        assert await r.read() == b"ok"
        await asyncio.sleep(0.2)
        r = await pool.request("GET", "/", [])
        assert r.status == 200 and await r.read() == b"ok"
        assert pool.connections_made == 2
        await pool.close()


@pytest.mark.parametrize(
    ("method", "raw", "reused"),
    [("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
     ("HEAD", b"HTTP/1.1 200 OK\r\nX-No-Length: 1\r\n\r\n", False),
     ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", True),
     ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", True)],
    ids=["head-chunked", "head-no-length", "204", "304-with-length"],
)  # fmt: skip
async def test_responses_without_a_body(method: str, raw: bytes, reused: bool) -> None:
    async with RawServer(keep_alive(raw)) as srv:
        pool = await _pool(srv.port)
        for _ in range(2):
            r = await pool.request(method, "/", [])
            assert r.content_length is None and await r.read() == b""
        assert pool.connections_made == (1 if reused else 2)
        await pool.close()
