"""The forwarding path: one request in, one upstream exchange, streamed both ways.

``Proxy.handle`` is an aiohttp low-level handler; ``Proxy.serve_plain`` answers
the plain requests of ``sidecar.fastpath``'s listener with the same admission,
counters and error mapping. Both admit the request through the limiter (when
one is given) and forward it over the lean keep-alive pool
(``sidecar.upstream``; or, with ``client="aiohttp"``, one shared
``ClientSession``: explicit connector limit, keep-alive, no cookie jar, no
decompression, which also carries WebSockets), streaming the body back. Errors map to 502 (refused or
broken upstream), 504 (upstream timeout) and 413 (body over ``max_body_bytes``);
a rejection becomes a 503 from ``flowctl.http.rejection_parts`` (Retry-After, JSON reason).

Requests and sessions: a request's admission (and its RT sample) normally lasts
until its response body ends. A **stream** ends its admission, with no RT
sample, when the response headers are out: a ``text/event-stream`` response (detected), any
response under a ``stream_paths`` prefix (configured), and a WebSocket at its
handshake. The rest of a stream's life is a session: counted in
``sessions_active``, never in the limiter's in-flight or RT window.

Streaming fidelity: the status and headers go out as soon as the upstream sent
them. A small sized body (up to ``SMALL_BODY_BYTES``) is written together with
the head only when all of it had already arrived; otherwise the head and the
bytes so far go out at once and the rest follows as it arrives.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from flowctl.http import rejection_parts
from flowctl.limiter import DryRunStart, Reason, Rejection, Slot
from flowctl.quota import QuotaRejection, Quotas, quota_parts
from sidecar.config import SidecarConfig
from sidecar.fastpath import SMALL_BODY_BYTES, PlainConnection, PlainRequest
from sidecar.wire import error_body, header_block, plain_response, reason_phrase, status_line
from sidecar.headers import request_header_list, request_headers, response_header_list, response_headers
from sidecar.clients import ClientBodyTimeout, idle_limited
from sidecar.upstream import UpstreamConnectError, UpstreamError, UpstreamPool, UpstreamTimeout

__all__ = ["Admission", "Proxy"]

log = logging.getLogger("sidecar.proxy")

# Responses with a known length up to SMALL_BODY_BYTES are read whole and written once
# (cheaper than a StreamResponse); anything else streams in chunks.
_NO_BODY_STATUS = frozenset({204, 304})
# Set by the lean client itself from the body it sends; Expect is answered by this hop.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "expect"})


class Admission(Protocol):
    """What the proxy needs from ``flowctl.limiter.Limiter``: the slot API, one admission path."""

    def slot(self, resource: str = "default", priority: str | None = None) -> Slot: ...
    def admit(self, slot: Slot) -> float | Rejection: ...
    def success(self, slot: Slot, start: float) -> float: ...
    def ignore(self, slot: Slot, start: float) -> float: ...
    def dropped(self, slot: Slot, start: float) -> float: ...


class Observer(Protocol):
    """A bound histogram child (``flowctl.metrics.RequestDurations.child``)."""

    def observe(self, amount: float) -> None: ...


class Sessions(Protocol):
    """Where sessions are counted (``flowctl.metrics.SessionMetrics``)."""

    def begin(self, resource: str) -> None: ...
    def end(self, resource: str, duration_s: float) -> None: ...


class _BodyTooLarge(Exception):
    pass


class _Held:
    """One request's admission until it is released: at the end, or at a stream's response headers.

    ``slot`` / ``start``: the admission (``Limiter.admit``); ``slot`` None once released or without a limiter.
    """

    __slots__ = ("slot", "start", "started_s", "stream_path", "session", "session_at_s")

    def __init__(self, admission: tuple[Slot, float] | None, started_s: float, stream_path: bool) -> None:
        self.slot: Slot | None = admission[0] if admission is not None else None
        self.start = admission[1] if admission is not None else 0.0
        self.started_s = started_s
        self.stream_path = stream_path  # under a configured stream_paths prefix
        self.session = False  # past its headers as a stream: counted in Proxy.sessions_active
        self.session_at_s = 0.0  # time.monotonic() when it became a session


def _is_event_stream(content_type: str | None) -> bool:
    return content_type is not None and content_type.lstrip()[:17].lower() == "text/event-stream"


def _content_type(headers: list[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if len(name) == 12 and name.lower() == "content-type":
            return value
    return None


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"error": reason_phrase(status), "detail": detail}, status=status)


def _is_websocket(request: web.BaseRequest) -> bool:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    return "upgrade" in request.headers.get("Connection", "").lower()


class Proxy:
    """Forwards every request to ``config.upstream``; owns the upstream ClientSession.

    Use ``async with Proxy(config, limiter=...) as proxy`` (or ``await start()`` /
    ``await close()``) around serving; pass ``proxy.handle`` to ``web.Server``.
    ``inflight`` counts requests being forwarded; ``wait_idle()`` waits for it to reach 0.
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        limiter: Admission | None = None,
        durations: Observer | None = None,
        sessions: Sessions | None = None,
        clock: Callable[[], float] = time.monotonic,
        quotas: Quotas | None = None,
        priorities: Sequence[str] = ("critical", "default", "sheddable"),
        default_priority: str = "default",
    ) -> None:
        self.config = config
        self.limiter = limiter
        self._quotas = quotas
        self._priorities = frozenset(priorities)
        self._default_priority = default_priority
        self._durations = durations
        self._sessions = sessions
        self._clock = clock
        self._base = config.upstream
        self._max_body = config.max_body_bytes
        self._body_timeout_s = config.body_timeout_s
        self._priority_header = config.priority_header
        self._resource = config.resource
        self._trust_forwarded = config.trust_forwarded
        self._session: aiohttp.ClientSession | None = None
        self._pool: UpstreamPool | None = None
        self._prefix = ""
        self._total_timeout_s = config.total_timeout_s or None
        self._stream_paths = config.stream_paths
        self._exempt_paths = frozenset(config.exempt_paths)  # proxied without admission (probes)
        self.inflight = 0
        #: streams (SSE, configured paths, WebSockets) past their headers: no longer admissions
        self.sessions_active = 0
        self.sessions_total = 0
        self._idle: asyncio.Event | None = None
        # Plain counters (exported at scrape time by the admin collector).
        self.requests_total = 0
        self.errors_total: collections.Counter[str] = collections.Counter()
        self.rejections: collections.deque[tuple[float, str, str, Any]] = collections.deque(maxlen=config.rejections_kept)

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        connector = aiohttp.TCPConnector(
            limit=cfg.max_connections,
            limit_per_host=0,
            keepalive_timeout=cfg.upstream_keepalive_s or None,
            force_close=cfg.upstream_keepalive_s == 0,
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=cfg.total_timeout_s or None,
            connect=cfg.connect_timeout_s,
            sock_connect=cfg.connect_timeout_s,
            sock_read=cfg.read_timeout_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            raise_for_status=False,
            read_bufsize=2**16,
        )
        if cfg.client == "fast":
            parts = urlsplit(cfg.upstream)
            ssl_ctx = None
            if parts.scheme == "https":
                import ssl

                ssl_ctx = ssl.create_default_context()
            self._pool = UpstreamPool(
                parts.hostname or "127.0.0.1",
                parts.port or (443 if parts.scheme == "https" else 80),
                limit=cfg.max_connections,
                keepalive_s=cfg.upstream_keepalive_s,
                connect_timeout_s=cfg.connect_timeout_s,
                read_timeout_s=cfg.read_timeout_s,
                ssl=ssl_ctx,
                clock=self._clock,
            )
            self._prefix = parts.path.rstrip("/")
        self._idle = asyncio.Event()
        self._idle.set()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Proxy not started")
        return self._session

    async def wait_idle(self) -> None:
        """Return once no request is being forwarded."""
        if self._idle is not None:
            await self._idle.wait()

    # -- the handler ---------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests_total += 1
        length = request.content_length
        if self._max_body and length is not None and length > self._max_body:
            self.errors_total["413"] += 1
            return _error(413, f"request body of {length} bytes exceeds max_body {self._max_body}")
        admission: tuple[Slot, float] | None = None
        # None means the limiter's default class; so does a name it does not know.
        priority = None
        if self._priority_header:
            header = request.headers.get(self._priority_header)
            priority = header.lower() if header else None
        if self.limiter is not None and request.path not in self._exempt_paths:
            got = self._admit(priority, request.method, request.path)
            if isinstance(got, Rejection):
                headers, body = rejection_parts(got)
                return web.json_response(body, status=503, headers=headers)
            admission = got
        if self._quotas is not None:  # only an admitted request is debited
            refused = await self._debit_quota(request.headers.get, request.path, priority, admission)
            if refused is not None:
                status, headers, body = quota_parts(refused)
                return web.json_response(body, status=status, headers=headers)
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # Admitted and within max_body: ask the client for the body (this hop answers Expect).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        held = _Held(admission, self._begin(), self._is_stream_path(request.path))
        outcome = "ignore"
        try:
            if _is_websocket(request):
                resp, outcome = await self._websocket(request, held)
            elif self._pool is not None:
                resp, outcome = await self._forward_fast(request, length, held)
            else:
                resp, outcome = await self._forward(request, length, held)
            return resp
        finally:
            self._end(held, outcome)

    def _admit(self, priority: str | None, method: str, path: str) -> tuple[Slot, float] | Rejection:
        """The admission ``(slot, start)`` or a Rejection (a dry-run or real shed is recorded);
        the caller answers a rejection."""
        limiter = self.limiter
        assert limiter is not None
        slot = limiter.slot(self._resource, priority)
        start = limiter.admit(slot)
        if isinstance(start, Rejection):
            self._record_rejection(method, path, start.reason)
            return start
        if isinstance(start, DryRunStart):  # a dry-run shed: admitted, but recorded
            self._record_rejection(method, path, start.reason, counted=False)
        return slot, start

    async def _debit_quota(
        self, header: Callable[[str], str | None], path: str, priority: str | None, admission: tuple[Slot, float] | None
    ) -> QuotaRejection | None:
        """Debit the request's quotas (``flowctl.quota``); on a refusal the admission is released
        (``ignore``) and counted by status, and the refusal returned for the caller to answer."""
        quotas = self._quotas
        assert quotas is not None
        matched = quotas.match(header, path, priority if priority in self._priorities else self._default_priority)
        if not matched:
            return None
        try:
            refused = await quotas.debit(matched)
        except BaseException:
            if admission is not None and self.limiter is not None:
                self.limiter.ignore(*admission)
            raise
        if refused is not None:
            if admission is not None and self.limiter is not None:
                self.limiter.ignore(*admission)
            self.errors_total[str(refused.status)] += 1
        return refused

    def _begin(self) -> float:
        """Count a request as being forwarded; returns its start time (for the duration histogram)."""
        self.inflight += 1
        if self._idle is not None:
            self._idle.clear()
        return self._clock() if self._durations is not None else 0.0

    def _end(self, held: _Held, outcome: str) -> None:
        """The request (or session) is done: release its token with ``outcome`` and observe its duration."""
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()
        if held.session:
            self.sessions_active -= 1
            if self._sessions is not None:
                self._sessions.end(self._resource, time.monotonic() - held.session_at_s)
        slot = held.slot
        if slot is not None:
            held.slot = None
            getattr(self.limiter, outcome)(slot, held.start)
            if self._durations is not None:
                self._durations.observe(self._clock() - held.started_s)

    def _is_stream_path(self, path: str) -> bool:
        prefixes = self._stream_paths
        return bool(prefixes) and any(path.startswith(p) for p in prefixes)

    def _headers_out(self, held: _Held | None, content_type: str | None) -> None:
        """The response headers were sent: a stream becomes a session (its admission ends here)."""
        if held is not None and (held.stream_path or _is_event_stream(content_type)):
            self._to_session(held)

    def _to_session(self, held: _Held) -> None:
        """End the admission; the rest is a session. The limiter learns nothing from a session's start
        (no RT, no completion): a handshake's RT is not a request's, and as BBR's min RT it would
        collapse the limit and the ceiling's pipe for the plain requests."""
        if held.session:
            return
        held.session = True
        held.session_at_s = time.monotonic()
        slot, held.slot = held.slot, None
        self.sessions_active += 1
        self.sessions_total += 1
        if self._sessions is not None:
            self._sessions.begin(self._resource)
        if slot is not None and self.limiter is not None:
            self.limiter.ignore(slot, held.start)
            if self._durations is not None:
                self._durations.observe(self._clock() - held.started_s)

    def _record_rejection(self, method: str, path: str, reason: Reason, *, counted: bool = True) -> None:
        # Cheap on the hot path: keep the Reason object; /debug/limiter formats it (rejection_log()).
        if counted:
            self.errors_total["503"] += 1
        if self.rejections.maxlen:
            self.rejections.append((time.time(), method, path, reason))

    def rejection_log(self) -> list[dict[str, Any]]:
        """The last ``rejections_kept`` rejections (dry-run ones included), newest first, JSON-able."""
        out = []
        for at_unix_s, method, path, reason in reversed(self.rejections):
            out.append(
                {
                    "at_unix_s": at_unix_s,
                    "method": method,
                    "path": path,
                    "reason": reason.as_dict() if hasattr(reason, "as_dict") else str(reason),
                }
            )
        return out

    async def _limited_body(self, content: aiohttp.StreamReader, limit_bytes: int, state: list[bool]) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in idle_limited(content.iter_any(), self._body_timeout_s):
            seen += len(chunk)
            if seen > limit_bytes:
                state[0] = True
                raise _BodyTooLarge()
            yield chunk

    def _aiohttp_headers(self, request: web.BaseRequest, *, websocket: bool = False) -> CIMultiDict[str]:
        """The upstream request headers for the aiohttp client paths (plain and WebSocket)."""
        return request_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            host=request.host,
            trust_forwarded=self._trust_forwarded,
            websocket=websocket,
        )

    async def _forward(self, request: web.BaseRequest, length: int | None, held: _Held | None = None) -> tuple[web.StreamResponse, str]:
        """Returns (response, token outcome: "success" | "ignore" | "dropped")."""
        url = URL(self._base + request.raw_path, encoded=True)
        headers = self._aiohttp_headers(request)
        headers.popall("Expect", None)
        data: Any = None
        too_large = [False]
        if request.body_exists:
            if self._max_body and length is None:
                data = self._limited_body(request.content, self._max_body, too_large)
            else:
                data = request.content
        try:
            up = await self.session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False, compress=None
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every upstream failure maps to a status
            if too_large[0] or isinstance(e, _BodyTooLarge) or isinstance(e.__cause__, _BodyTooLarge):
                self.errors_total["413"] += 1
                return _error(413, f"request body exceeds max_body {self._max_body}"), "ignore"
            if isinstance(e, ClientBodyTimeout) or isinstance(e.__cause__, ClientBodyTimeout):
                return self._client_body_timeout(e)
            return self._upstream_error(e)
        try:
            return await self._respond(request, up, held), "success"
        finally:
            up.release()

    async def _forward_fast(self, request: web.BaseRequest, length: int | None, held: _Held | None = None) -> tuple[web.StreamResponse, str]:
        """The hot path on the lean client (``client = "fast"``)."""
        assert self._pool is not None
        header_list = request_header_list(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            host=request.host,
            trust_forwarded=self._trust_forwarded,
            drop=_FRAMING_HEADERS,
        )
        body: bytes | AsyncIterator[bytes] | None = None
        too_large = [False]
        if request.body_exists:
            if length is not None and length <= SMALL_BODY_BYTES:
                body = await request.read()
            elif self._max_body and length is None:
                body = self._limited_body(request.content, self._max_body, too_large)
            else:
                body = idle_limited(request.content.iter_any(), self._body_timeout_s)
        started: list[web.StreamResponse] = []
        if self._total_timeout_s is None:
            return await self._exchange_fast(request, header_list, body, length, started, held)
        try:
            async with asyncio.timeout(self._total_timeout_s):
                return await self._exchange_fast(request, header_list, body, length, started, held)
        except TimeoutError as e:
            if started:  # the total timeout hit mid-stream: the client connection is already cut
                self.errors_total["504"] += 1
                return started[0], "dropped"
            return self._upstream_error(e)

    async def _exchange_fast(
        self,
        request: web.BaseRequest,
        header_list: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        started: list[web.StreamResponse],
        held: _Held | None,
    ) -> tuple[web.StreamResponse, str]:
        assert self._pool is not None
        try:
            up = await self._pool.request(request.method, self._prefix + request.raw_path, header_list, body, content_length=length)
        except _BodyTooLarge:
            self.errors_total["413"] += 1
            return _error(413, f"request body exceeds max_body {self._max_body}"), "ignore"
        except ClientBodyTimeout as e:
            return self._client_body_timeout(e)
        except UpstreamError as e:
            return self._upstream_error(e)
        try:
            out = response_headers(up.headers, up.connection)
            resp = await self._respond_with(
                request, up.status, up.reason, out, up.content_length, up.read_chunk, up.read_ready, up.close, started, held
            )
        finally:
            up.close()
        return resp, "success"

    def _client_body_timeout(self, e: Exception) -> tuple[web.StreamResponse, str]:
        self.errors_total["408"] += 1
        resp = _error(408, str(e))
        resp.force_close()
        return resp, "ignore"

    def _upstream_error(self, e: BaseException) -> tuple[web.StreamResponse, str]:
        status, detail, outcome = self._upstream_error_parts(e)
        return _error(status, detail), outcome

    def _upstream_error_parts(self, e: BaseException) -> tuple[int, str, str]:
        """(status, detail, token outcome) for an upstream failure; counts it."""
        if isinstance(e, asyncio.TimeoutError):  # includes aiohttp.ServerTimeoutError
            self.errors_total["504"] += 1
            return 504, f"upstream timed out ({type(e).__name__})", "dropped"
        self.errors_total["502"] += 1
        if isinstance(e, aiohttp.ClientConnectorError):
            detail = f"upstream unreachable: {e.os_error.strerror or e.os_error}"
        elif isinstance(e, UpstreamConnectError):
            detail = str(e)
        else:
            detail = f"upstream failed: {type(e).__name__}: {e}"
        return 502, detail, "ignore"

    # -- the fast listener's path (sidecar.fastpath) -------------------------------------------

    async def serve_plain(self, req: PlainRequest, conn: PlainConnection, *, close: bool) -> bool:
        """Answer one plain request from the fast listener by writing bytes to ``conn``.

        The same admission, counters, headers and error mapping as ``handle``.
        ``close``: answer with ``Connection: close``. Returns False when the
        connection must not be reused (the response was cut short).
        """
        self.requests_total += 1
        admission: tuple[Slot, float] | None = None
        priority = req.priority.lower() if req.priority else None
        if self.limiter is not None and (not self._exempt_paths or req.path not in self._exempt_paths):
            got = self._admit(priority, req.method, req.path)
            if isinstance(got, Rejection):
                headers, body = rejection_parts(got)
                conn.write(plain_response(503, list(headers.items()), json.dumps(body).encode(), close=close))
                return True
            admission = got
        if self._quotas is not None:  # only an admitted request is debited
            refused = await self._debit_quota(_header_getter(req.headers), req.path, priority, admission)
            if refused is not None:
                status, quota_headers, quota_body = quota_parts(refused)
                conn.write(plain_response(status, list(quota_headers.items()), json.dumps(quota_body).encode(), close=close))
                return True
        held = _Held(admission, self._begin(), bool(self._stream_paths) and self._is_stream_path(req.target))
        outcome = "ignore"
        try:
            outcome = await self._exchange_plain(req, conn, close, held)
            return outcome != "cut"
        finally:
            self._end(held, "dropped" if outcome == "cut" else outcome)

    async def _exchange_plain(self, req: PlainRequest, conn: PlainConnection, close: bool, held: _Held) -> str:
        """Forward and write the response; returns the token outcome, or "cut" (client connection aborted)."""
        pool = self._pool
        assert pool is not None
        header_list = request_header_list(
            req.headers, peer=conn.peer, scheme="http", host=req.host, trust_forwarded=self._trust_forwarded, drop=_FRAMING_HEADERS
        )
        wrote_head = False
        up: Any = None
        try:
            async with asyncio.timeout(self._total_timeout_s):
                up = await pool.request(req.method, self._prefix + req.target, header_list, req.body or None)
                head = status_line(up.status, up.reason) + header_block(response_header_list(up.headers, up.connection))
                if close:
                    head += b"Connection: close\r\n"
                if req.method == "HEAD" or up.status in _NO_BODY_STATUS or up.status < 200:
                    conn.write(head + b"\r\n")
                    up.close()
                    return "success"
                length = up.content_length
                first = b""
                if length is not None and length <= SMALL_BODY_BYTES:
                    first, complete = up.read_ready()  # only bytes already here: never wait for more
                    if complete:
                        conn.write(head + b"\r\n" + first)
                        return "success"
                chunked = length is None
                conn.write(head + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n") + first)
                wrote_head = True
                self._headers_out(held, _content_type(up.headers))
                while chunk := await up.read_chunk():
                    conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await conn.drain()
                if chunked:
                    conn.write(b"0\r\n\r\n")
                return "success"
        except (UpstreamError, TimeoutError) as e:
            if up is not None:
                up.close()
            if wrote_head:  # headers are gone: cut the connection rather than mark a truncated body complete
                if isinstance(e, TimeoutError):
                    self.errors_total["504"] += 1
                log.warning("stream from upstream broke after headers: %s: %s", type(e).__name__, e)
                conn.abort()
                return "cut"
            status, detail, outcome = self._upstream_error_parts(e)
            conn.write(plain_response(status, [], error_body(status, detail), close=close))
            return outcome
        except BaseException:
            if up is not None:
                up.close()
            conn.abort()
            raise

    async def _respond(self, request: web.BaseRequest, up: aiohttp.ClientResponse, held: _Held | None) -> web.StreamResponse:
        hdrs = response_headers(up.headers.items(), up.headers.getall("Connection", ()))
        content = up.content

        def read_ready() -> tuple[bytes, bool]:
            try:
                data = content.read_nowait()
            except Exception:  # noqa: BLE001 - a broken body: incomplete; the next readany raises
                return b"", False
            return data, content.at_eof()

        return await self._respond_with(
            request, up.status, up.reason or "", hdrs, up.content_length, content.readany, read_ready, up.close, None, held
        )

    async def _respond_with(
        self,
        request: web.BaseRequest,
        status: int,
        reason: str,
        hdrs: CIMultiDict[str],
        length: int | None,
        read_chunk: Callable[[], Awaitable[bytes]],
        read_ready: Callable[[], tuple[bytes, bool]],
        abort_upstream: Callable[[], None],
        started: list[web.StreamResponse] | None = None,
        held: _Held | None = None,
    ) -> web.StreamResponse:
        """Send the upstream's response: whole when small, sized and already here, else streamed chunk by chunk.

        ``read_ready()`` returns the body bytes that already arrived and whether that is all of it.
        """
        if request.method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
            resp = web.StreamResponse(status=status, reason=reason or None, headers=hdrs)
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        first = b""
        if length is not None and length <= SMALL_BODY_BYTES:
            first, complete = read_ready()  # only bytes already here: never wait for more
            if complete:
                return web.Response(status=status, reason=reason or None, headers=hdrs, body=first)
        resp = web.StreamResponse(status=status, reason=reason or None, headers=hdrs)
        await resp.prepare(request)
        if started is not None:
            started.append(resp)
        self._headers_out(held, hdrs.get("Content-Type"))
        try:
            if first:
                await resp.write(first)
            while chunk := await read_chunk():
                await resp.write(chunk)
        except (aiohttp.ClientError, UpstreamError, asyncio.TimeoutError, asyncio.CancelledError, ConnectionError) as e:
            # Headers are gone: the only honest signal left is to cut the connection
            # (never write the final chunk, which would mark a truncated body complete).
            if not isinstance(e, asyncio.CancelledError):
                log.warning("stream from upstream broke after headers: %s: %s", type(e).__name__, e)
            abort_upstream()
            transport = request.transport
            if transport is not None:
                transport.abort()
            if isinstance(e, asyncio.CancelledError):
                raise
            return resp
        await resp.write_eof()
        return resp

    async def _websocket(self, request: web.BaseRequest, held: _Held) -> tuple[web.StreamResponse, str]:
        url = URL(self._base + request.raw_path, encoded=True)
        headers = self._aiohttp_headers(request, websocket=True)
        protocols = tuple(
            p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",") if p.strip()
        )
        try:
            up_ws = await self.session.ws_connect(
                url, headers=headers, protocols=protocols, autoclose=False, autoping=True, max_msg_size=0
            )
        except aiohttp.WSServerHandshakeError as e:
            self.errors_total["502"] += 1
            return _error(502, f"upstream refused the WebSocket upgrade: {e.status}"), "ignore"
        except Exception as e:  # noqa: BLE001
            return self._upstream_error(e)
        self._to_session(held)  # a WebSocket holds no limiter slot beyond its handshake
        ws = web.WebSocketResponse(
            protocols=(up_ws.protocol,) if up_ws.protocol else (), autoclose=False, autoping=True, max_msg_size=0
        )
        try:
            await ws.prepare(request)
            a = asyncio.ensure_future(_pump(ws, up_ws))
            b = asyncio.ensure_future(_pump(up_ws, ws))
            try:
                await asyncio.wait((a, b), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (a, b):
                    t.cancel()
                await asyncio.gather(a, b, return_exceptions=True)
        finally:
            await up_ws.close()
            await ws.close()
        return ws, "ignore"


def _header_getter(headers: list[tuple[str, str]]) -> Callable[[str], str | None]:
    """``get(name)`` over a plain request's header list: the first value of ``name`` (given in lower case)."""

    def get(name: str) -> str | None:
        for k, v in headers:
            if len(k) == len(name) and k.lower() == name:
                return v
        return None

    return get


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Copy messages from ``src`` to ``dst`` until ``src`` closes; forward its close code."""
    while True:
        msg = await src.receive()
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            await dst.close(code=msg.data or 1000, message=(msg.extra or "").encode())
            return
        elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
