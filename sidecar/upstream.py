"""A lean HTTP/1.1 client for the one upstream: a keep-alive pool on asyncio protocols.

Why not aiohttp's ClientSession on the hot path: it costs ~150-200 us of CPU
per request here (cookie jar, tracing, redirects, URL handling, timers),
several times the rest of the proxy. This client does only what a reverse
proxy to one origin needs:

- a pool of at most ``limit`` connections with keep-alive (idle ones expire
  after ``keepalive_s``); LIFO reuse; requests wait for a free slot;
- requests with no body, a bytes body, or a streamed body (Content-Length
  when known, else chunked), with write flow control;
- responses framed by Content-Length, chunked encoding or connection close;
  HEAD/1xx/204/304 have no body; interim 1xx responses are skipped;
- bodies are delivered chunk by chunk with read flow control (the socket is
  paused above ``HIGH_WATER_BYTES`` buffered), so memory stays bounded;
- no cookie handling at all, no decompression (bytes pass through untouched);
- connect and read (per-socket-read) timeouts raise ``UpstreamTimeout``;
  anything else that goes wrong raises ``UpstreamError``;
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


class _Connection(asyncio.Protocol):
    __slots__ = (
        "pool", "transport", "buf", "head_waiter", "body", "body_bytes", "body_waiter", "body_done",
        "closed", "exc", "framing", "remaining", "chunk_state", "keep_alive", "paused", "write_paused",
        "drain_waiter", "idle_since", "got_bytes", "timer", "read_timeout_s", "head_only", "response_head",
        "content_length", "connection_values",
    )  # fmt: skip

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_waiter: asyncio.Future[None] | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.body_bytes = 0
        self.body_waiter: asyncio.Future[None] | None = None
        self.body_done = True
        self.closed = False
        self.exc: BaseException | None = None
        self.framing = ""  # "length" | "chunked" | "close" | "none"
        self.remaining = 0
        self.chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailers
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
        if self.framing == "close" and not self.body_done:
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
        if self.response_head is None:
            self.buf += data
            try:
                self._parse_head()
            except UpstreamError as e:
                self.exc = e
                self._wake()
                if self.transport is not None:
                    self.transport.abort()
            return
        self._feed_body(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost does the bookkeeping

    # -- parsing ---------------------------------------------------------------------------------

    def _parse_head(self) -> None:
        while self.response_head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise UpstreamError("upstream response head too large")
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise UpstreamError(f"malformed status line from upstream: {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue  # interim response (100 Continue, 103 Early Hints): skip
            headers: list[tuple[str, str]] = []
            length: int | None = None
            chunked = False
            conn_close = parts[0] == "HTTP/1.0"
            connection: list[str] = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name[-1] in " \t":
                    raise UpstreamError(f"malformed header line from upstream: {line[:80]!r}")
                headers.append((name, value.strip()))
            lhead = head.lower()  # only look closer when a framing header is there at all
            if "content-length" in lhead or "transfer-encoding" in lhead or "connection" in lhead:
                for name, value in headers:
                    lname = name.lower()
                    if lname == "content-length":
                        if not value.isdigit() or (length is not None and int(value) != length):
                            raise UpstreamError("invalid Content-Length from upstream")
                        length = int(value)
                    elif lname == "transfer-encoding":
                        chunked = value.lower().endswith("chunked")
                    elif lname == "connection":
                        connection.append(value)
                        toks = {t.strip().lower() for t in value.split(",")}
                        if "close" in toks:
                            conn_close = True
                        elif "keep-alive" in toks and parts[0] == "HTTP/1.0":
                            conn_close = False
            self.connection_values = connection
            self.keep_alive = not conn_close
            if self.head_only or status in _NO_BODY or status < 200:
                self.framing, self.body_done = "none", True
            elif chunked:
                self.framing, self.body_done, self.chunk_state, length = "chunked", False, 0, None
            elif length is not None:
                self.framing, self.remaining, self.body_done = "length", length, length == 0
            else:
                self.framing, self.body_done, self.keep_alive = "close", False, False
            self.response_head = (status, parts[2] if len(parts) > 2 else "", headers)
            self.content_length = length if self.framing == "length" else None
            self._wake_head()
            if self.buf:
                rest = bytes(self.buf)
                self.buf.clear()
                self._feed_body(rest)

    def _feed_body(self, data: bytes) -> None:
        if self.body_done:
            if data:  # bytes after a complete response: the connection cannot be trusted
                self.keep_alive = False
            return
        f = self.framing
        if f == "length":
            if len(data) > self.remaining:
                data = data[: self.remaining]
                self.keep_alive = False
            self.remaining -= len(data)
            self._push(data)
            if self.remaining == 0:
                self.body_done = True
                self._wake()
        elif f == "close":
            self._push(data)
        else:
            try:
                self._feed_chunked(data)
            except UpstreamError as e:
                self.exc = e
                self._wake()
                if self.transport is not None:
                    self.transport.abort()

    def _feed_chunked(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            st = self.chunk_state
            if st == 1:
                n = min(self.remaining, len(buf))
                self._push(bytes(buf[:n]))
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    self.chunk_state = 2
                continue
            i = buf.find(b"\r\n")
            if i < 0:
                if len(buf) > 4096:
                    raise UpstreamError("malformed chunked body from upstream")
                return
            line = bytes(buf[:i])
            del buf[: i + 2]
            if st == 0:
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise UpstreamError(f"bad chunk size from upstream: {size_text[:20]!r}") from None
                if size == 0:
                    self.chunk_state = 3
                else:
                    self.remaining, self.chunk_state = size, 1
            elif st == 2:
                if line:
                    raise UpstreamError("missing CRLF after a chunk from upstream")
                self.chunk_state = 0
            elif not line:  # st == 3: trailers end with an empty line (trailers are dropped)
                self.body_done = True
                if buf:
                    self.keep_alive = False
                    buf.clear()
                self._wake()
                return

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self.body.append(data)
        self.body_bytes += len(data)
        if self.body_bytes > HIGH_WATER_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

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
        return self.keep_alive and self.body_done and not self.closed and self.exc is None and not self.buf

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
        self.response_head = None
        self.framing = ""
        self.body_done = False
        self.keep_alive = True
        self.got_bytes = False
        self.head_only = head_only
        self.exc = None
        self.chunk_state = 0
        self.remaining = 0


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
                _, proto = await self.loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self._ssl)
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.host}:{self.port} timed out after {self.connect_timeout_s:g} s") from None
        except OSError as e:
            raise UpstreamConnectError(f"upstream unreachable: {e.strerror or e}") from e
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
                assert transport is not None
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
        assert transport is not None
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
