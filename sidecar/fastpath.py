"""The fast listener: plain HTTP/1.1 requests proxied without aiohttp's server machinery.

aiohttp's server side cost about a third of the sidecar's CPU per request
(request object, multidicts, a task per connection, response serialization).
This listener frames requests itself (``bytes.find`` for the end of the
head, ``Content-Length`` for the body), parses heads with ``httptools``
(llhttp) and hands each request to ``Proxy.serve_plain``, which writes the
response bytes straight to the transport.

Only *plain* requests take this path: HTTP/1.1, no ``Upgrade``, no
``Expect``, no ``Transfer-Encoding``, a ``Content-Length`` body of at most
``SMALL_BODY_BYTES`` (and within ``max_body``), a head that arrived whole
within ``max_head_bytes``, and a head llhttp accepts. At the first request that is
not plain, the connection is **handed over** to aiohttp's ``web.Server``
protocol with every byte from that request on: WebSockets, chunked and
large (streamed) request bodies, 100-continue, 413, malformed or oversized
heads, HTTP/1.0 keep the behaviour (and the tests) of the aiohttp path.

Pipelined requests are answered in order; a hand-over waits until the
requests before it are answered. Idle keep-alive connections are closed
after ``keepalive_s`` by a sweep every few seconds (no timer per request).

Hostile clients (``sidecar.clients``): a head split over reads is buffered here
(up to ``max_head_bytes``) until it is whole, and a head not whole within
``header_timeout_s`` of the connection or of its first byte is answered 408 and
closed (slowloris); so is a body with no new byte for ``body_timeout_s``. The
same sweep enforces both. Beyond the guard's ``max_clients`` a new connection is
closed at once. A request line that is not ``... HTTP/1.x``, a bare-LF head or an
oversized head is handed to aiohttp at once, which answers the fixed 400.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from sidecar.clients import ClientGuard, timeout_response

__all__ = ["FastListener", "PlainConnection", "PlainRequest", "PlainServer", "SMALL_BODY_BYTES"]

SMALL_BODY_BYTES = 64 * 1024
_PLAIN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_MAX_QUEUED = 16  # pipelined requests buffered per connection before reading pauses
_SWEEP_S = 5.0
_LINGER_S = 1.0  # after a 408: read and drop what the client still sends, so our close is not a reset


class _NotPlain(Exception):
    """Raised from a parser callback: this request goes to aiohttp."""


class PlainRequest:
    """One framed request: method, raw target, headers as received, body bytes (maybe empty)."""

    __slots__ = ("method", "target", "headers", "body", "host", "close", "priority")

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.host: str | None = None
        self.close = False  # Connection: close from the client
        self.priority: str | None = None  # the value of the configured priority header

    @property
    def path(self) -> str:
        """The target without its query (for logs)."""
        return self.target.split("?", 1)[0]



class PlainConnection(Protocol):
    """What a ``PlainServer`` writes a plain request's answer to (this module's connection)."""

    peer: str | None

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def abort(self) -> None: ...


class PlainServer(Protocol):
    """Who answers the plain requests the listener frames (``sidecar.proxy.Proxy``)."""

    async def serve_plain(self, req: PlainRequest, conn: PlainConnection, *, close: bool) -> bool: ...

class _Conn(asyncio.Protocol):
    """One client connection on the fast listener."""

    def __init__(self, listener: FastListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buf = bytearray()
        self.queue: collections.deque[PlainRequest] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        self.req: PlainRequest | None = None  # the request whose head is being parsed
        self.want = -1  # head+body bytes of the request being framed, or -1
        self.head_len = 0
        self.body_len = 0
        self.handover_pending = False
        self.handed_over = False
        self.closed = False
        self.eof = False
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_active = 0.0
        self.head_started: float | None = None  # when the head being awaited was first waited for
        self.refused = False
        self.lingering = False  # answered 408 and half-closed: dropping input until the close

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.listener.guard.admit():
            self.refused = self.closed = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        self.last_active = self.head_started = self.listener.clock()
        self.listener.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.closed = True
        self.listener.guard.release()
        self.listener.conns.discard(self)
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.refused or self.lingering:
            return
        if not self.buf and self.want < 0 and self.head_started is None:
            self.head_started = self.listener.clock()  # the first byte of the next head
        self.buf += data
        self.last_active = self.listener.clock()
        if not self.handover_pending:
            self._frame()

    def eof_received(self) -> bool | None:
        if self.lingering or (self.worker is None and not self.queue):
            return None  # nothing pending: close
        self.eof = True
        return True  # half-closed: answer what was asked, then close (see _work)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        assert self.req is not None
        self.req.target += url.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.req is not None
        self.req.headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        parser = self.parser
        if parser.get_http_version() != "1.1" or parser.should_upgrade():
            raise _NotPlain()
        req.method = parser.get_method().decode("ascii", "replace")
        if req.method not in _PLAIN_METHODS:
            raise _NotPlain()
        length = 0
        prio_name = self.listener.priority_header
        for name, value in req.headers:
            n = len(name)
            if n == 4 and name.lower() == "host":
                req.host = value
            elif n == 14 and name.lower() == "content-length":
                length = int(value)  # llhttp has checked it is a number (and not repeated differently)
            elif n == 10 and name.lower() == "connection":
                if "close" in value.lower():
                    req.close = True
            elif (n == 17 and name.lower() == "transfer-encoding") or (n == 6 and name.lower() == "expect"):
                raise _NotPlain()
            elif n == 7 and name.lower() == "upgrade":
                raise _NotPlain()
            elif prio_name is not None and name.lower() == prio_name:
                req.priority = value
        max_body = self.listener.max_body
        if length > SMALL_BODY_BYTES or (max_body and length > max_body):
            raise _NotPlain()
        self.body_len = length

    # -- framing ----------------------------------------------------------------------------------

    def _frame(self) -> None:
        """Cut complete requests off the buffer and queue them; hand over at the first non-plain one."""
        buf = self.buf
        while buf and not self.closed:
            if self.want < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > self.listener.max_head_bytes or not _may_become_plain(buf):
                        self._handover()  # aiohttp answers it (400, 431, HTTP/1.0 ...)
                    elif self.head_started is None:
                        self.head_started = self.listener.clock()
                    return  # a head split over reads: wait for the rest (the sweep times it out)
                self.head_started = None
                head_len = end + 4
                if head_len > self.listener.max_head_bytes:
                    self._handover()
                    return
                self.req = PlainRequest()
                self.body_len = 0
                try:
                    self.parser.feed_data(bytes(buf[:head_len]))
                except httptools.HttpParserError:  # malformed, or _NotPlain raised by a callback (wrapped)
                    self._handover()
                    return
                self.want = head_len + self.body_len
                self.head_len = head_len
            if len(buf) < self.want:
                return
            req = self.req
            assert req is not None
            if self.body_len:
                body = bytes(buf[self.head_len : self.want])
                try:
                    self.parser.feed_data(body)
                except httptools.HttpParserError:
                    self._handover()
                    return
                req.body = body
            del buf[: self.want]
            self.want = -1
            self.req = None
            self.queue.append(req)
            if self.worker is None:
                self.worker = asyncio.ensure_future(self._work())
            if len(self.queue) >= _MAX_QUEUED and not self.read_paused and self.transport is not None:
                self.read_paused = True
                self.transport.pause_reading()

    def _handover(self) -> None:
        """Give the connection, from the current request on, to aiohttp (after pending answers)."""
        if self.worker is not None or self.queue:
            self.handover_pending = True
            if not self.read_paused and self.transport is not None:
                self.read_paused = True
                self.transport.pause_reading()
            return
        transport = self.transport
        if transport is None or self.closed:
            return
        self.handed_over = True
        self.listener.conns.discard(self)
        self.listener.handed_over += 1
        proto = self.listener.make_fallback()
        data, self.buf = bytes(self.buf), bytearray()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if data:
            proto.data_received(data)
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    async def _work(self) -> None:
        proxy = self.listener.proxy
        try:
            while self.queue and not self.closed:
                req = self.queue.popleft()
                if self.read_paused and not self.handover_pending and len(self.queue) < _MAX_QUEUED // 2:
                    self.read_paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                close = req.close or self.listener.draining
                keep = await proxy.serve_plain(req, self, close=close)
                self.last_active = self.listener.clock()
                if close or not keep:
                    self.queue.clear()
                    if self.transport is not None:
                        self.transport.close()
                    return
        finally:
            self.worker = None
        if self.eof and not self.closed and self.transport is not None:
            self.transport.close()  # the client half-closed: everything it asked is answered
        elif self.handover_pending and not self.closed:
            self.handover_pending = False
            self._handover()
        elif self.buf and not self.closed:
            self._frame()

    # -- what serve_plain uses ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            fut = self.drain_waiter = asyncio.get_running_loop().create_future()
            await fut

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self, now: float, idle_s: float) -> None:
        if self.worker is None and not self.queue and self.transport is not None and now - self.last_active >= idle_s:
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        """The sweep: 408 and close a too-slow head or body; close an idle keep-alive connection."""
        if (self.worker is not None or self.queue or self.handover_pending or self.closed or self.lingering
                or self.transport is None):
            return  # busy answering (the client waits for us), or closing already
        listener = self.listener
        if self.want >= 0:
            if now - self.last_active >= listener.body_timeout_s:
                self._time_out("body")
        elif self.head_started is not None and (self.buf or self.last_active <= self.head_started):
            if now - self.head_started >= listener.header_timeout_s:
                self._time_out("header")
        elif now - self.last_active >= listener.keepalive_s:
            self.transport.close()

    def _time_out(self, kind: str) -> None:
        self.listener.guard.timed_out(kind, self.peer)
        t = self.transport
        if t is None:
            return
        t.write(timeout_response())
        if t.can_write_eof():
            # Half-close and drop further input for a moment: closing with unread input would send a
            # reset, and the client could lose the 408 (a slowloris client keeps writing).
            self.lingering = True
            t.write_eof()
            asyncio.get_running_loop().call_later(_LINGER_S, t.close)
        else:
            t.close()


class FastListener:
    """Accepts client connections, serves plain requests, hands the rest to ``make_fallback()``.

    ``make_fallback`` builds aiohttp's protocol for a connection (``web.Server``
    is such a factory). ``draining``: connections close after their current
    response. ``close_idle()`` closes connections with nothing in progress.
    """

    def __init__(
        self,
        proxy: PlainServer,
        make_fallback: Callable[[], asyncio.Protocol],
        *,
        max_head_bytes: int = 8190,
        max_body: int = 0,
        priority_header: str | None = None,
        keepalive_s: float = 75.0,
        header_timeout_s: float = 20.0,
        body_timeout_s: float = 30.0,
        guard: ClientGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proxy = proxy
        self.make_fallback = make_fallback
        self.max_head_bytes = max_head_bytes
        self.max_body = max_body
        self.priority_header = priority_header.lower() if priority_header else None
        self.keepalive_s = keepalive_s
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.guard = guard if guard is not None else ClientGuard()
        self.sweep_s = max(0.01, min(_SWEEP_S, header_timeout_s / 4, body_timeout_s / 4))
        self.clock = clock
        self.conns: set[_Conn] = set()
        self.draining = False
        self.handed_over = 0
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, *, backlog: int = 1024) -> int:
        """Listen on ``host:port``; return the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, port, backlog=backlog, reuse_address=True)
        self._sweeper = loop.create_task(self._sweep(), name="sidecar-keepalive-sweep")
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return 0

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            now = self.clock()
            for conn in list(self.conns):
                conn.check_timeouts(now)

    def stop_listening(self) -> None:
        """Refuse new connections; busy ones close after their current response, idle ones now."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.close_if_idle(float("inf"), 0.0)

    async def close(self) -> None:
        """Stop listening and cut every connection still open."""
        self.stop_listening()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.conns):
            conn.abort()
        if self._server is not None:
            self._server.close()
            self._server = None


def _may_become_plain(buf: bytearray) -> bool:
    """False once a partial head cannot be a plain HTTP/1.1 request (hand it to aiohttp now)."""
    if b"\n\n" in buf:  # a bare-LF end of head
        return False
    sp = buf.find(b" ")
    method = bytes(buf[: sp if sp >= 0 else 24])
    if len(method) > 20 or not (method.isalpha() and method.isupper()):  # TLS, binary, lower-case noise
        return False
    eol = buf.find(b"\r\n")
    if eol < 0:
        return b"\n" not in buf  # a bare LF inside the request line
    return buf[:eol].endswith((b" HTTP/1.1", b" HTTP/1.0"))
