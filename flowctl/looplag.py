"""Event-loop lag: the signal that sees requests queued *before* any middleware runs.

A handler that burns CPU without awaiting blocks the asyncio loop. Requests
then wait in socket buffers and the loop's ready queue, invisible to the
limiter, so in-flight stays at 1 and an in-flight rule never fires. What does
show is lag: a callback queued at ``t`` runs late.

``LoopLagMonitor`` measures it with *probes*, not a periodic timer. The first
``check`` at least ``min_gap_s`` (5 ms) after the last probe ran queues one
(``loop.call_soon``) and notes the time; the probe runs after everything
already in the loop's ready queue. The gap bounds the probes to 200 a second:
a probe queued per batch of requests cost an extra loop iteration (an
``epoll_wait`` system call) per batch, ~3% of a hello world's throughput.
Two numbers come out of it:

- the *live* lag ``now - queued_at`` while a probe is pending: how long the
  loop has been busy with other callbacks since this batch of requests
  started. Each request behind a blocking handler sees it grow, so requests
  late in a hidden queue are shed in the same loop iteration.
- the *measured* lag of each probe (``ran_at - queued_at``), kept as the last
  value and the maximum since start, for metrics.

Why probes: a periodic timer (the first design, 100 Hz) wakes the process
100 times a second, and each wake-up cost far more than its callback here:
about 3% of a hello-world's throughput while under load and 3% of a core
while idle (``python -m bench.middleware_overhead --paired`` / ``--idle``).
Probes cost at most one ``call_soon`` per ``min_gap_s`` while requests
come, and nothing at all while none does. Detection is also tighter: the
lag counts from the first request checked after the gap (at most
``min_gap_s`` into a block), not from a timer that was due up to one
interval after the block began.

What ``check`` reports is the larger of the live lag and the *backlog* of
the last probe: a probe that measured ``L`` seconds means requests that
arrived during that iteration have waited up to ``L`` and are still being
dispatched, so for ``L`` seconds after it ran its lag counts too. Without
this, each batch of requests behind a blocking handler started from zero
(the probe is queued by the batch's first request), about ten 5 ms handlers
ran per batch, and the admitted p50 was 180-194 ms against 279 ms with no
limiter; with it, 69 ms (the 100 Hz timer of the first design: 86-91 ms).
Measured with ``examples/blocking_handler.py measure``. Older lag never
fires: it says nothing about the queue now.

A CFS freeze (the group's quota spent for the period) stops the loop too,
but the probes see it only if one was pending when it began: with a blocking
handler, requests that arrived during a 50-70 ms freeze were read after it
and admitted as if on time. So an in-process limiter that reads its own
group's counters tells the monitor of each freeze (``frozen(since)``): the
pending probe, or a new one, counts from the freeze's start, and the batch
read right after it is shed. Measured with the scorecard's 4x overload,
blocking handler, 0.5 CPU: admitted p99 7.4x and 6.9x unloaded before,
2.1x-3.6x after; the slow requests had all been in the first
150 ms of the overload, in the batches read after its first freezes.

The probes see the loop's own queue, not the socket's. A request whose
bytes arrived while the loop ran a long batch waits in the socket buffer
until the next ``epoll_wait``, and aiohttp then takes two more loop
iterations to reach the middleware (the connection's task wakes, then
starts the request's task): at 4x, with a 1.3 ms blocking handler at 0.87
CPU, the admitted p99 was 36 ms while the largest lag the probes
measured was 13 ms. So the aiohttp integration also tells the monitor, per request,
how long ago the kernel received that request's bytes (``request_wait``):
``socket_wait_s`` reads ``tcpi_last_data_recv`` from ``TCP_INFO`` (Linux,
TCP; 0.7 µs a request in isolation, about 4 µs in a saturated hello
world, ``bench/results/overhead-s14-socket-wait``), whose unit is the
kernel's tick (4 ms at ``CONFIG_HZ=250``, as here; 1 ms at 1000).
``check`` reports the larger of the two. Measured on that service
(``python -m bench overload --cpus 0.87 --work-ms 1.3 --handler
blocking``): admitted p99 7.8-8.1x unloaded at 4x and 8.8-9.7x at 8x with
the probes alone (4 runs), 2.8-2.9x and 2.9-3.1x with the socket wait (2
runs), at the same goodput.

It implements the limiter's ``Trigger`` protocol: ``name``, ``threshold``
(seconds), ``bypass_inflight`` and ``check(now) -> float | None``, plus
``quiet_until``: each check works out when the next one could matter (the
pending probe's ``queued_at + threshold``, or the next probe's due time
``ran_at + min_gap_s``), and the limiter skips the call before then. So the
check runs about twice per probe instead of on every request; a hypothesis
test drives a gated and an always-polled monitor through the same steps and
requires the same answers.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import time
from collections.abc import Callable
from types import TracebackType

from flowctl.errors import ConfigError

__all__ = ["DEFAULT_THRESHOLD_S", "LoopLagMonitor", "socket_wait_s"]

_EARLY_S = 1e-9  # quiet_until is set this much early (see check)
_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux only
_TCP_INFO_LEN = 56  # through tcpi_last_ack_recv; tcpi_last_data_recv (ms) is the u32 at offset 52
_LAST_DATA_RECV = struct.Struct("=I").unpack_from
DEFAULT_THRESHOLD_S = 0.005
"""The least lag that sheds: the limiter's lag stage sheds a class at its ``trigger_scale`` (default 2)
times the higher of this and ``Policy.lag_requests`` requests' CPU, capped at ``Policy.lag_cap_s``
(15 ms): default 10-30 ms, critical 25-75 ms."""


def socket_wait_s(sock: object) -> float | None:
    """Seconds since the kernel last received data on the TCP socket ``sock`` (``socket.socket``
    or asyncio's ``TransportSocket``): for an HTTP/1.1 request read now, how long its bytes
    waited. In the kernel's ticks (4 ms at ``CONFIG_HZ=250``). None: not a TCP socket, or not
    Linux."""
    if _TCP_INFO is None:
        return None
    try:  # a Unix socket refuses (EOPNOTSUPP): asking is cheaper than checking its family first
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None
    if len(info) < _TCP_INFO_LEN:
        return None
    ms: int = _LAST_DATA_RECV(info, 52)[0]
    return ms / 1000.0


class LoopLagMonitor:
    """Measures asyncio event-loop lag with probes queued by ``check``; a limiter ``Trigger``.

    ``check(now)`` returns the live lag in seconds when it is at least
    ``threshold_s`` (the trigger fires), else None; with no probe pending it
    queues one. ``clock`` must be the clock the limiter passes as ``now``
    (default ``time.monotonic``). Start it with ``async with monitor:`` or
    ``await start()`` / ``await stop()`` from inside the loop it watches; a
    monitor that is not started never queues probes and never fires.
    ``report_for_s``: how long the last probe's lag is reported by ``lag_s``
    once no probe is pending (then 0: nothing is queued). ``min_gap_s``: no
    probe is queued sooner than this after the last one ran. ``request_wait(s)`` before the
    limiter admits a request: ``check`` reports at least how long that request has waited.
    """

    __slots__ = (
        "_clock",
        "_loop",
        "_min_gap_s",
        "_probe_cb",
        "_queued_at",
        "_ran_at",
        "_report_for_s",
        "_threshold_s",
        "bypass_inflight",
        "last_lag_s",
        "max_lag_s",
        "name",
        "probes",
        "quiet_until",
        "request_waited_s",
    )

    def __init__(
        self,
        *,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        bypass_inflight: bool = True,
        name: str = "loop_lag",
        report_for_s: float = 1.0,
        min_gap_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not threshold_s > 0:
            raise ConfigError(f"threshold_s must be > 0, got {threshold_s!r}")
        if not min_gap_s >= 0:
            raise ConfigError(f"min_gap_s must be >= 0, got {min_gap_s!r}")
        if not report_for_s >= 0:
            raise ConfigError(f"report_for_s must be >= 0, got {report_for_s!r}")
        self.name = name
        self.bypass_inflight = bypass_inflight
        self._threshold_s = float(threshold_s)
        self._report_for_s = float(report_for_s)
        self._min_gap_s = float(min_gap_s)
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued_at: float | None = None
        self._ran_at = -float("inf")
        self._probe_cb = self._probe
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self.probes = 0
        #: ``check(now)`` returns None and has nothing to do while ``now < quiet_until`` (clock
        #: seconds): the limiter skips the call until then. -inf means "ask on the next request".
        self.quiet_until = -math.inf
        #: How long the request being admitted has waited since its bytes arrived (``request_wait``).
        self.request_waited_s = 0.0

    @property
    def threshold(self) -> float:
        """Lag in seconds at or above which ``check`` fires (Trigger protocol)."""
        return self._threshold_s

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._loop is not None

    @property
    def pending(self) -> bool:
        """A probe is queued and has not run yet."""
        return self._queued_at is not None

    def live_lag_s(self, now: float) -> float:
        """How long the pending probe has waited at ``now`` (0 when none is pending)."""
        at = self._queued_at
        if at is None or now <= at:
            return 0.0
        return now - at

    def lag_s(self, now: float | None = None) -> float:
        """The lag to report: the live lag if a probe is pending, else the last probe's
        lag if it ran within ``report_for_s``, else 0."""
        now = self._clock() if now is None else now
        if self._queued_at is not None:
            return self.live_lag_s(now)
        return self.last_lag_s if now - self._ran_at <= self._report_for_s else 0.0

    def check(self, now: float) -> float | None:
        """Trigger protocol: the lag when it is at least the threshold, else None.

        The lag is the live one, the last probe's while ``now`` is within that many
        seconds of when it ran (its backlog), or the request's own wait (``request_wait``),
        whichever is largest. With no
        probe pending (and the monitor started) this queues one, timed from ``now``.
        """
        at = self._queued_at
        if at is None:
            lag = 0.0
            loop = self._loop
            if loop is not None and now - self._ran_at >= self._min_gap_s:
                self._queued_at = now
                loop.call_soon(self._probe_cb)
        else:
            lag = now - at
        last = self.last_lag_s
        if last > lag and now - self._ran_at < last:
            lag = last  # the backlog of a late iteration: requests that queued during it are still served
        if self.request_waited_s > lag:
            lag = self.request_waited_s  # this request's own wait, in the socket and the loop
        threshold = self._threshold_s
        if lag >= threshold:
            self.quiet_until = -math.inf
            return lag
        # Not firing now. The backlog only shrinks with time, so what can fire next is the live lag
        # of the pending probe (at queued_at + threshold); with none pending, the next probe is due
        # min_gap_s after the last one ran (never, while stopped: start() re-arms). A nanosecond
        # early, so float rounding can only make the limiter ask once too often, never skip a firing.
        at = self._queued_at
        if at is not None:
            self.quiet_until = at + threshold - _EARLY_S
        elif self._loop is not None:
            self.quiet_until = self._ran_at + self._min_gap_s - _EARLY_S
        else:
            self.quiet_until = math.inf
        return None

    def request_wait(self, waited_s: float) -> None:
        """The request about to be admitted has waited ``waited_s`` seconds since its bytes reached
        the socket (``socket_wait_s``): ``check`` reports at least that until the next call. A
        wait at or over the threshold makes the limiter ask ``check`` now."""
        self.request_waited_s = waited_s
        if waited_s >= self._threshold_s:
            self.quiet_until = -math.inf

    # -- probing ------------------------------------------------------------------

    def frozen(self, since: float) -> None:
        """The process was frozen (its cgroup throttled by CFS) from ``since`` until about now.

        A freeze is lag the probes cannot see while none is pending (the loop may have been
        between probes): the requests read after it waited through it all the same. So the
        pending probe counts from ``since`` (one is queued if none is), and until it runs, after
        the batch of requests read now, the live lag is at least the freeze. The limiter calls
        this when it reads its own group's counters (``Limiter``, period gate)."""
        loop = self._loop
        if loop is None:
            return
        at = self._queued_at
        if at is None:
            loop.call_soon(self._probe_cb)
            self._queued_at = since
        elif since < at:
            self._queued_at = since
        self.quiet_until = -math.inf

    def arm(self, queued_at: float) -> None:
        """Mark a probe as pending since ``queued_at`` without queuing a callback (tests, benchmarks)."""
        self._queued_at = queued_at
        self.quiet_until = -math.inf

    def probe_ran(self, now: float) -> float:
        """Record that the pending probe ran at ``now``; return its measured lag (0 if none was pending)."""
        at, self._queued_at = self._queued_at, None
        lag = 0.0 if at is None or now <= at else now - at
        self.last_lag_s = lag
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        self._ran_at = now
        self.probes += 1
        self.quiet_until = -math.inf  # the next check re-plans (a late probe's backlog fires at once)
        return lag

    def _probe(self) -> None:
        if self._queued_at is not None:  # not cleared by stop()
            self.probe_ran(self._clock())

    async def start(self) -> None:
        """Start probing on the running loop (idempotent)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.quiet_until = -math.inf

    async def stop(self) -> None:
        """Stop probing; the live lag reads 0 afterwards."""
        self._loop = None
        self._queued_at = None
        self.quiet_until = -math.inf

    async def __aenter__(self) -> LoopLagMonitor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return (
            f"LoopLagMonitor(threshold_s={self._threshold_s}, "
            f"last_lag_s={self.last_lag_s:.4f}, max_lag_s={self.max_lag_s:.4f})"
        )
