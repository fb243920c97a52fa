"""One asyncio task that runs a callback every ``interval_s``: the shared start/stop of background loops.

Fixed rate: call ``k`` is due ``k * interval_s`` after ``start()``, so the
callback's own run time does not make the schedule drift. After a stall (a
blocked loop, a suspended host) the missed calls are skipped, not replayed
in a burst: the next one is due one interval after the late call. The first
call comes one interval after ``start()``; an owner that wants a value right
away calls its callback itself before starting. A callback that raises is
logged and called again at the next tick.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from flowctl.errors import ConfigError

__all__ = ["Periodic", "next_due"]

_log = logging.getLogger("flowctl")


def next_due(due_at: float, now: float, interval_s: float) -> float:
    """When the call after one due at ``due_at`` (and run at ``now``) is due: on the fixed
    schedule, or one interval after ``now`` when that schedule is already in the past."""
    nxt = due_at + interval_s
    return nxt if nxt > now else now + interval_s


class Periodic:
    """Calls ``callback`` (sync, or returning an awaitable) every ``interval_s`` from one task.

    ``start()`` is idempotent, ``stop()`` cancels and waits for the task; ``async with``
    does both. ``clock`` and ``sleep`` are injectable for tests (they must agree).
    """

    __slots__ = ("_callback", "_clock", "_interval_s", "_name", "_sleep", "_task", "calls")

    def __init__(
        self,
        callback: Callable[[], object],
        interval_s: float,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < interval_s < math.inf:
            raise ConfigError(f"interval_s: must be > 0 and finite, got {interval_s!r}")
        self._callback = callback
        self._interval_s = float(interval_s)
        self._name = name
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.calls = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        clock, interval_s = self._clock, self._interval_s
        due = clock() + interval_s
        me = asyncio.current_task()
        while self._task is me:  # stop() clears _task first: a swallowed cancellation still ends the loop
            await self._sleep(max(0.0, due - clock()))
            if self._task is not me:
                return
            try:
                result = self._callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:  # keep the schedule: one failed call must not end the loop
                _log.exception("%s: periodic call failed", self._name)
            self.calls += 1
            due = next_due(due, clock(), interval_s)

    async def start(self) -> None:
        """Start the task on the running loop (no-op when already running)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait for it (no-op when not running)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # A callback may swallow the cancellation (asyncio.wait_for on 3.11 can, when it races a
        # completion): the task then sleeps on. Cancel again until it ends, so stop() returns.
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done():
                task.cancel()
        if not task.cancelled() and task.exception() is not None:
            _log.warning("%s: ended with %r", self._name, task.exception())

    async def __aenter__(self) -> Periodic:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
