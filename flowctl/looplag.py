"""Event-loop lag: the signal that sees requests queued *before* any middleware runs.

A handler that burns CPU without awaiting blocks the asyncio loop. New
requests then wait in socket buffers and the loop's ready queue, invisible to
the middleware, so in-flight stays at 1 and an in-flight rule never fires.
What does show is lag: a timer due at ``t`` runs late.

``LoopLagMonitor`` keeps one timer pending (due ``interval_s`` after the last
tick). Two numbers come out of it:

- the *live* lag ``now - due`` while the timer is overdue: how long the loop
  has been unable to get back to its timers *right now*. Each request that
  finally reaches the middleware behind a blocked loop sees it, so a request
  late in a hidden queue is shed in the same loop iteration it was queued in.
- the *measured* lag of each completed tick (``max(0, ran_at - due)``), kept as
  the last value and the maximum since start, for metrics.

It implements the limiter's ``Trigger`` protocol: ``name``, ``threshold``
(seconds), ``bypass_inflight`` and ``check(now) -> float | None``. Only the
live lag fires: a tick that came late in the past says nothing about the
current queue, and shedding on it would reject the first, still-fast requests
of the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType

from flowctl.errors import ConfigError

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Measures asyncio event-loop lag with one periodic timer; a limiter ``Trigger``.

    ``check(now)`` returns the live lag in seconds when it is at least
    ``threshold_s`` (the trigger fires), else None. ``clock`` must be the
    clock the limiter passes as ``now`` (default ``time.monotonic``, which is
    also what asyncio's loop uses). Start it with ``async with monitor:`` or
    ``await start()`` / ``await stop()`` from inside the loop it watches.
    """

    __slots__ = (
        "_clock",
        "_due",
        "_interval_s",
        "_task",
        "_threshold_s",
        "bypass_inflight",
        "last_lag_s",
        "max_lag_s",
        "name",
        "ticks",
    )

    def __init__(
        self,
        *,
        threshold_s: float = 0.05,
        interval_s: float = 0.01,
        bypass_inflight: bool = True,
        name: str = "loop_lag",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not threshold_s > 0:
            raise ConfigError(f"threshold_s must be > 0, got {threshold_s!r}")
        if not interval_s > 0:
            raise ConfigError(f"interval_s must be > 0, got {interval_s!r}")
        self.name = name
        self.bypass_inflight = bypass_inflight
        self._threshold_s = float(threshold_s)
        self._interval_s = float(interval_s)
        self._clock = clock
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self.ticks = 0

    @property
    def threshold(self) -> float:
        """Lag in seconds at or above which ``check`` fires (Trigger protocol)."""
        return self._threshold_s

    @property
    def interval_s(self) -> float:
        """Seconds between ticks: the worst-case detection delay on top of the threshold."""
        return self._interval_s

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def live_lag_s(self, now: float) -> float:
        """How long the pending timer is overdue at ``now`` (0 when on time or not running)."""
        due = self._due
        if due is None or now <= due:
            return 0.0
        return now - due

    def lag_s(self, now: float | None = None) -> float:
        """The lag to report: the live lag if the loop is late now, else the last tick's lag."""
        live = self.live_lag_s(self._clock() if now is None else now)
        return live if live > self.last_lag_s else self.last_lag_s

    def check(self, now: float) -> float | None:
        """Trigger protocol: the live lag when it is at least the threshold, else None."""
        due = self._due
        if due is None:
            return None
        lag = now - due
        return lag if lag >= self._threshold_s else None

    # -- ticking ----------------------------------------------------------------

    def arm(self, now: float) -> None:
        """Set the next tick as due ``interval_s`` after ``now`` (what the timer task does)."""
        self._due = now + self._interval_s

    def tick(self, now: float) -> float:
        """Record a tick that ran at ``now``, re-arm, and return its measured lag."""
        due = self._due
        lag = 0.0 if due is None or now <= due else now - due
        self.last_lag_s = lag
        if lag > self.max_lag_s:
            self.max_lag_s = lag
        self.ticks += 1
        self.arm(now)
        return lag

    async def _run(self) -> None:
        clock = self._clock
        interval = self._interval_s
        self.arm(clock())
        while True:
            await asyncio.sleep(interval)
            self.tick(clock())

    async def start(self) -> None:
        """Start ticking on the running loop (idempotent)."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flowctl-loop-lag")

    async def stop(self) -> None:
        """Stop ticking and wait for the task; the live lag reads 0 afterwards."""
        task, self._task = self._task, None
        self._due = None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

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
            f"LoopLagMonitor(threshold_s={self._threshold_s}, interval_s={self._interval_s}, "
            f"last_lag_s={self.last_lag_s:.4f}, max_lag_s={self.max_lag_s:.4f})"
        )
