"""A lean HTTP/1.1 client for the one upstream: a keep-alive pool on asyncio protocols.

Why not aiohttp's ClientSession on the hot path: it costs ~150-200 us of CPU
per request here (cookie jar, tracing, redirects, URL handling, timers),
several times the rest of the proxy. This client does only what a reverse
proxy to one origin needs; responses are parsed and framed by ``httptools``
(llhttp: Content-Length, chunked, close-delimited, 1xx, 204/304):

- a pool of at most ``limit`` connections with keep-alive (idle ones expire
  after ``keepalive_s``); LIFO reuse; requests wait for a free slot;
- requests with no body, a bytes body, or a streamed body (Content-Length
  when known, else chunked), with write flow control;
- interim 1xx responses are skipped; a HEAD response has no body whatever
  its headers say (the parser is replaced before the next request);
- bodies are delivered chunk by chunk with read flow control (the socket is
  paused above ``HIGH_WATER_BYTES`` buffered), so memory stays bounded;
- no cookie handling at all, no decompression (bytes pass through untouched);
- connect and read (per-socket-read) timeouts raise ``UpstreamTimeout``;
  anything else that goes wrong raises ``UpstreamError``;
- a connection that sent bytes after a complete response is not reused;
- a request on a reused keep-alive connection that dies before any response
  byte (the upstream closed it while idle) is retried once on a new
  connection when its body is replayable (none or bytes).

WebSocket upgrades are not handled here (the proxy uses aiohttp for those).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httptools

__all__ = ["HIGH_WATER_BYTES", "UpstreamError", "UpstreamPool", "UpstreamResponse", "UpstreamTimeout"]

HIGH_WATER_BYTES = 256 * 1024
LOW_WATER_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
_NO_BODY = frozenset({204, 304})


class UpstreamError(Exception):
    """The upstream refused, closed, or sent something that is not HTTP/1.x."""


class UpstreamConnectError(UpstreamError):
    """The TCP connection could not be made (refused, unreachable)."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Connect or read timeout."""


class UpstreamResponse:
    """Status, reason, headers (list of (name, value)) and the body as chunks (``read_chunk``)."""

    __slots__ = ("status", "reason", "headers", "content_length", "connection", "_conn", "_done")

    def __init__(
        self,
        conn: _Connection,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
        connection: list[str],
    ) -> None:
        self.status = status
        self.connection = connection  # the values of every Connection header (hop-by-hop names)
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self._conn: _Connection | None = conn
        self._done = False

    async def read_chunk(self) -> bytes:
        """The next body bytes; b"" at the end. Raises UpstreamError if the body is cut short."""
        conn = self._conn
        if conn is None:
            return b""
        chunk = await conn.read_body()
        if not chunk:
            self._finish(reuse=True)
        return chunk

    def read_ready(self) -> tuple[bytes, bool]:
        """The body bytes that already arrived, without waiting, and whether that was the whole body.

        Never raises: a broken body shows as incomplete, and the next ``read_chunk`` raises.
        """
        conn = self._conn
        if conn is None:
            return b"", True
        data = b"".join(conn._drain_all()) if conn.body else b""
        conn.body_bytes -= len(data)
        if conn.paused and conn.body_bytes < LOW_WATER_BYTES and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        if conn.body_done and conn.exc is None:
            self._finish(reuse=True)
            return data, True
        return data, False

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def _finish(self, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool._release(conn, reuse=reuse and conn.reusable())

    def close(self) -> None:
        """Give the connection back (reused only if the body was read to its end)."""
        conn = self._conn
        if conn is not None:
            self._finish(reuse=conn.body_done)


class _ExtraBytes(Exception):
    """Raised from a parser callback: bytes after the complete response (the connection is not reused)."""


class _Connection(asyncio.Protocol):
    """One upstream connection; ``httptools`` (llhttp) parses its responses."""

    __slots__ = (
        "pool", "transport", "parser", "parser_clean", "head_bytes", "head_waiter", "reason", "headers",
        "body", "body_bytes", "body_waiter", "body_done", "needs_eof", "closed", "exc", "keep_alive", "paused",
        "write_paused", "drain_waiter", "idle_since", "got_bytes", "timer", "read_timeout_s", "head_only",
        "response_head", "content_length", "connection_values",
    )  # fmt: skip

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser_clean = True  # at a message boundary: can parse the next response
        self.head_bytes = 0
        self.head_waiter: asyncio.Future[None] | None = None
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.body: collections.deque[bytes] = collections.deque()
        self.body_bytes = 0
        self.body_waiter: asyncio.Future[None] | None = None
        self.body_done = True
        self.needs_eof = False  # the body ends when the upstream closes (no length, not chunked)
        self.closed = False
        self.exc: BaseException | None = None
        self.keep_alive = True
        self.paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.got_bytes = False
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout_s = pool.read_timeout_s
        self.head_only = False
        self.response_head: tuple[int, str, list[tuple[str, str]]] | None = None
        self.content_length: int | None = None
        self.connection_values: list[str] = []

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.needs_eof and not self.body_done:  # a close-delimited body: the close is its end
            self.body_done = True
            self.keep_alive = False
        elif not self.body_done or self.head_waiter is not None:
            self.exc = exc or UpstreamError("upstream closed the connection" + (" mid-body" if self.response_head else ""))
        self._wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(self.exc or UpstreamError("upstream closed the connection"))
        self.pool._forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.body_done:  # bytes after a complete response, or on an idle connection
            self.keep_alive = False
            return
        if self.response_head is None:
            if self.head_bytes > MAX_HEAD_BYTES:  # checked before feeding: a head ends within one read more
                self._fail(UpstreamError("upstream response head too large"))
                return
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            if self.response_head is not None and self.body_done:
                self.keep_alive = False  # extra bytes, or an upgrade nobody asked for: do not reuse
            else:
                self._fail(UpstreamError(f"malformed response from upstream: {e}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost does the bookkeeping

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.response_head is not None:
            raise _ExtraBytes()
        self.parser_clean = False
        self.reason = ""
        self.headers = []

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")  # may arrive in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim response (100 Continue, 103 Early Hints): skipped
        length: int | None = None
        chunked = False
        connection: list[str] = []
        for name, value in self.headers:  # llhttp has validated these; collect what framing and hop-by-hop need
            lname = name.lower()
            if lname == "content-length":
                length = int(value)
            elif lname == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
            elif lname == "connection":
                connection.append(value)
        self.connection_values = connection
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only or status in _NO_BODY or status < 200:
            self.body_done = True
            length = None
        elif chunked:
            length = None
        else:
            self.needs_eof = length is None
        self.content_length = length
        self.response_head = (status, self.reason, self.headers)
        self._wake_head()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            raise _ExtraBytes()
        self.body.append(body)
        self.body_bytes += len(body)
        if self.body_bytes > HIGH_WATER_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.response_head is None:
            return  # the end of an interim response
        self.parser_clean = True
        self.body_done = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._wake()

    # -- waking the reader -------------------------------------------------------------------------

    def _fail(self, exc: UpstreamError) -> None:
        self.exc = exc
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def _wake_head(self) -> None:
        w, self.head_waiter = self.head_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def _wake(self) -> None:
        self._wake_head()
        w, self.body_waiter = self.body_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    # -- used by the pool / response --------------------------------------------------------------

    def reusable(self) -> bool:
        return self.keep_alive and self.body_done and not self.closed and self.exc is None

    def _arm(self, fut: asyncio.Future[None]) -> None:
        if self.read_timeout_s:
            self.timer = self.pool.loop.call_later(self.read_timeout_s, self._on_timeout, fut)

    def _disarm(self) -> None:
        t, self.timer = self.timer, None
        if t is not None:
            t.cancel()

    def _on_timeout(self, fut: asyncio.Future[None]) -> None:
        self.timer = None
        if not fut.done():
            self.exc = UpstreamTimeout(f"no data from upstream for {self.read_timeout_s:g} s")
            fut.set_result(None)
            if self.transport is not None:
                self.transport.abort()

    async def wait_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        while self.response_head is None:
            if self.exc is not None:
                raise self.exc
            if self.closed:
                raise UpstreamError("upstream closed the connection before responding")
            fut = self.head_waiter = self.pool.loop.create_future()
            self._arm(fut)
            try:
                await fut
            finally:
                self._disarm()
        return self.response_head

    async def read_body(self) -> bytes:
        while True:
            if self.body:
                data = self.body.popleft() if len(self.body) == 1 else b"".join(self._drain_all())
                self.body_bytes -= len(data)
                if self.paused and self.body_bytes < LOW_WATER_BYTES and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return data
            if self.exc is not None:
                raise self.exc
            if self.body_done:
                return b""
            if self.closed:
                raise UpstreamError("upstream closed the connection mid-body")
            fut = self.body_waiter = self.pool.loop.create_future()
            self._arm(fut)
            try:
                await fut
            finally:
                self._disarm()

    def _drain_all(self) -> list[bytes]:
        out = list(self.body)
        self.body.clear()
        return out

    async def drain(self) -> None:
        if self.write_paused:
            if self.closed:
                raise self.exc or UpstreamError("upstream closed the connection")
            fut = self.drain_waiter = self.pool.loop.create_future()
            await fut

    def reset_for_request(self, head_only: bool) -> None:
        if not self.parser_clean:  # after a HEAD response llhttp still waits for its body
            self.parser = httptools.HttpResponseParser(self)
            self.parser_clean = True
        self.response_head = None
        self.head_bytes = 0
        self.body_done = False
        self.needs_eof = False
        self.keep_alive = True
        self.got_bytes = False
        self.head_only = head_only
        self.exc = None


class UpstreamPool:
    """Keep-alive connections to one ``host:port``; at most ``limit`` open at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limit: int = 1024,
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        ssl: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._ssl = ssl
        self._clock = clock
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.connections_made = 0
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A connection and whether it was reused from the idle list."""
        while True:
            now = self._clock()
            while self._idle:
                conn = self._idle.pop()
                if conn.closed or conn.transport is None or conn.transport.is_closing():
                    continue
                if not conn.keep_alive:  # it sent bytes while idle (e.g. a 408 before closing)
                    conn.transport.close()
                    continue
                if self.keepalive_s and now - conn.idle_since > self.keepalive_s:
                    conn.transport.close()
                    continue
                return conn, True
            if self._open < self.limit:
                self._open += 1
                try:
                    return await self._connect(), False
                except BaseException:
                    self._open -= 1
                    self._wake_waiter()
                    raise
            fut = self.loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout(self.connect_timeout_s or None):
                    await fut
            except TimeoutError:
                raise UpstreamTimeout(f"no upstream connection free within {self.connect_timeout_s:g} s") from None
            finally:
                if not fut.done():
                    fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s or None):
                transport, proto = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.host}:{self.port} timed out after {self.connect_timeout_s:g} s") from None
        except OSError as e:
            raise UpstreamConnectError(f"upstream unreachable: {e.strerror or e}") from e
        except RuntimeError as e:  # uvloop: "closed Transport handle and unset waiter" (closed while connecting)
            raise UpstreamConnectError(f"upstream connection closed while it was made: {e}") from e
        if proto.transport is None:
            # The transport was closed between the connect and connection_made (uvloop skips
            # connection_made then, and so never calls connection_lost): nothing will _forget it.
            transport.abort()
            raise UpstreamConnectError("upstream connection closed while it was made")
        self.connections_made += 1
        return proto

    def _wake_waiter(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def _release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not self._closed:
            conn.idle_since = self._clock()
            conn.response_head = None
            self._idle.append(conn)
        elif not conn.closed and conn.transport is not None:
            conn.transport.abort() if not conn.body_done else conn.transport.close()
        self._wake_waiter()

    def _forget(self, conn: _Connection) -> None:
        """Called once per connection, from connection_lost."""
        self._open -= 1
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._wake_waiter()

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request; return once the response head arrived. ``target`` is the raw path+query.

        With a streamed ``body`` and no ``content_length`` the body is sent chunked.
        The caller must read the response to its end or ``close()`` it.
        """
        head_only = method == "HEAD"
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        for k, v in headers:
            lines.append(f"{k}: {v}\r\n")
        chunked = False
        if isinstance(body, (bytes, bytearray)):
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif body is not None:
            if content_length is None:
                lines.append("Transfer-Encoding: chunked\r\n")
                chunked = True
            else:
                lines.append(f"Content-Length: {content_length}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        replayable = body is None or isinstance(body, (bytes, bytearray))
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            conn.reset_for_request(head_only)
            try:
                transport = conn.transport
                if transport is None or conn.closed:  # lost between _acquire and here (reset as it connected)
                    raise conn.exc or UpstreamError("upstream closed the connection before the request was sent")
                if body is None:
                    transport.write(head)
                elif isinstance(body, (bytes, bytearray)):
                    transport.write(head + body)
                else:
                    transport.write(head)
                    await self._send_stream(conn, body, chunked)
                status, reason, hdrs = await conn.wait_head()
            except UpstreamTimeout:
                self._release(conn, reuse=False)
                raise
            except (UpstreamError, OSError) as e:
                self._release(conn, reuse=False)
                if attempt == 0 and reused and replayable and not conn.got_bytes:
                    continue  # the idle connection was closed by the upstream: retry on a new one
                if isinstance(e, UpstreamError):
                    raise
                raise UpstreamError(f"upstream write failed: {e}") from e
            except BaseException:
                self._release(conn, reuse=False)
                raise
            return UpstreamResponse(conn, status, reason, hdrs, conn.content_length, conn.connection_values)
        raise AssertionError("unreachable")

    async def _send_stream(self, conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        transport = conn.transport
        if transport is None:
            raise UpstreamError("upstream connection has no transport")
        async for chunk in body:
            if conn.closed:
                raise conn.exc or UpstreamError("upstream closed the connection while the body was sent")
            if not chunk:
                continue
            if chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            await conn.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        for w in self._waiters:
            if not w.done():
                w.cancel()
        await asyncio.sleep(0)
