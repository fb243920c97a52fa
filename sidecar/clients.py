"""Hostile clients: the cap on client connections, bad requests and client timeouts.

``ClientGuard`` is shared by the fast listener and aiohttp's server protocol on the
same port: it counts open client connections (``admit``/``release``; beyond
``max_clients`` a new connection is closed at once and counted), and counts and logs
bad requests and client timeouts: one line each, without a traceback, at most
``log_burst`` lines and then ``log_per_s`` a second (the rest are counted and the next
line says how many were left out).

``GuardedServer`` is aiohttp's ``web.Server`` whose protocol answers a request it
cannot parse with a fixed ``400`` (``BAD_REQUEST_BODY``, never the request echoed) and
logs it through the guard instead of aiohttp's "Error handling request" traceback.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "BAD_REQUEST_BODY",
    "ClientBodyTimeout",
    "ClientGuard",
    "GuardedServer",
    "bad_request_response",
    "idle_limited",
    "timeout_response",
]

log = logging.getLogger("sidecar.clients")

BAD_REQUEST_BODY = b"bad request\n"


def bad_request_response() -> bytes:
    """The whole fixed 400 response (the connection is closed after it)."""
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%b" % (len(BAD_REQUEST_BODY), BAD_REQUEST_BODY))  # fmt: skip


def timeout_response() -> bytes:
    """The whole 408 response sent when a client is too slow with a head or a body."""
    return b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ClientGuard:
    """Open client connections against a cap, and rate-limited one-line logs of client faults."""

    def __init__(self, *, max_clients: int = 10000, log_per_s: float = 1.0, log_burst: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_clients = max_clients
        self.open = 0
        self.refused_total = 0
        self.bad_requests_total = 0
        self.timeouts_total: collections.Counter[str] = collections.Counter()  # "header" | "body"
        self.log_suppressed_total = 0
        self._log_per_s = log_per_s
        self._log_burst = float(log_burst)
        self._tokens = float(log_burst)
        self._tokens_at = clock()
        self._suppressed = 0
        self._clock = clock

    def admit(self) -> bool:
        """Take a slot for a new client connection; False (counted) when ``max_clients`` are open."""
        if self.open >= self.max_clients:
            self.refused_total += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def bad_request(self, peer: str | None, why: str) -> None:
        self.bad_requests_total += 1
        self._log("bad request from %s: %s", peer or "?", why)

    def timed_out(self, kind: str, peer: str | None) -> None:
        self.timeouts_total[kind] += 1
        self._log("client %s too slow: %s timeout, closed", peer or "?", kind)

    def _log(self, fmt: str, *args: object) -> None:
        now = self._clock()
        self._tokens = min(self._log_burst, self._tokens + (now - self._tokens_at) * self._log_per_s)
        self._tokens_at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            self.log_suppressed_total += 1
            return
        self._tokens -= 1.0
        if self._suppressed:
            fmt += " (%d similar lines left out)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        log.warning(fmt, *args)


def _reason(exc: BaseException | None, message: str | None) -> str:
    """A short, single-line reason: the error's class and at most 80 characters of its text."""
    text = (message or (str(exc) if exc is not None else "") or "").splitlines()
    first = text[0][:80] if text else ""
    name = type(exc).__name__ if exc is not None else "error"
    return f"{name}: {first}" if first else name


class _GuardedHandler(RequestHandler):
    """aiohttp's protocol with the guard's cap, a fixed 400 and a one-line log for bad requests."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, guard: ClientGuard,
                 holds_slot: bool, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._holds_slot = holds_slot  # True when the fast listener handed over its admitted connection
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._holds_slot:
            if not self._guard.admit():
                self._refused = True
                transport.close()
                return
            self._holds_slot = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._holds_slot:
            self._holds_slot = False
            self._guard.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:  # fmt: skip
        if status != 400:
            return super().handle_error(request, status, exc, message)
        self._guard.bad_request(request.remote, _reason(exc, message))
        resp = web.Response(status=400, body=BAD_REQUEST_BODY, content_type="text/plain")
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """``web.Server`` whose connections go through ``guard`` (see the module docstring).

    ``handover_protocol()`` is the protocol for a connection the fast listener already
    admitted (it keeps that slot).
    """

    def __init__(self, handler: Any, *, guard: ClientGuard, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard

    def _make(self, holds_slot: bool) -> RequestHandler:
        # web.Server.__call__ builds RequestHandler(self, loop=self._loop, **self._kwargs): the same, our class.
        return _GuardedHandler(self, loop=self._loop, guard=self.guard, holds_slot=holds_slot, **self._kwargs)

    def __call__(self) -> RequestHandler:
        return self._make(False)

    def handover_protocol(self) -> RequestHandler:
        return self._make(True)


class ClientBodyTimeout(Exception):
    """A request body streamed from the client had no new byte for the body timeout."""


async def idle_limited(chunks: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """``chunks`` as they come; ``ClientBodyTimeout`` when the next one takes more than ``idle_s``."""
    it = chunks.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ClientBodyTimeout(f"no request body byte for {idle_s:g} s") from None
        yield chunk
