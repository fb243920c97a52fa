"""Admission: tokens, priorities, triggers, reasons, dry-run and snapshots.

``Limiter.acquire(priority, resource)`` returns a ``Token`` (admitted) or a
``Rejection`` (shed, with a structured ``Reason``); it never raises. The slot
API does the same without a Token, for integrations that know a request's
pair in advance: ``slot = limiter.slot(resource, priority)`` once, then per
request ``start = limiter.admit(slot)`` (a float, or a ``Rejection``) and
exactly one ``limiter.success / ignore / dropped(slot, start)``. The
shedding rule, BBR-style::

    shed  iff  (hot  or  now < last_drop + cool_off_s)
               and  in-flight including this request > the priority's limit

``hot`` is any of: the CPU signal's fast or smoothed utilization >= the
threshold (default 0.8 of the effective CPU limit), the optional
``throttled_ratio`` / ``pressure_ratio`` thresholds, or a non-bypass
``Trigger`` firing. A ``Trigger`` with ``bypass_inflight=True`` sheds on its
own, whatever the in-flight count. Every shed (or dry-run "would shed")
restarts the cool-off. The priority's limit is a share of the algorithm's
``max_inflight`` under one shared in-flight count (see ``PriorityClass``).

The limiter is not thread-safe: use it from one thread (one event loop).
Per-request work is a few integer updates; counters are exported by reading
``snapshot()`` at scrape time, never by metrics calls per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Protocol, cast, runtime_checkable

from flowctl.errors import ConfigError
from flowctl.limit.base import LimitAlgorithm
from flowctl.signal import CpuReading, CpuSignal

__all__ = [
    "DEFAULT_PRIORITIES",
    "OTHER_RESOURCE",
    "PRIORITIES",
    "Decision",
    "Limiter",
    "LimiterSnapshot",
    "Priority",
    "PriorityClass",
    "Reason",
    "Rejection",
    "Slot",
    "Token",
    "Trigger",
]

_log = logging.getLogger("flowctl.limiter")

Priority = str
"""A priority class name: ``"critical"``, ``"default"`` or ``"sheddable"`` (or a configured one)."""

OTHER_RESOURCE = "other"
"""Resource name that absorbs new resources once ``max_resources`` distinct ones were seen."""

_ROUNDING_SLACK = 1e-9
_MIN_RETRY_AFTER_S = 0.1
_UNKNOWN_CPU_WARN_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """How much of the shared limit a priority class may use while the limiter is hot.

    - ``share``: the class is admitted while in-flight (all classes, including
      this request) stays within ``max(1, ceil(share * max_inflight))``.
    - ``trigger_scale``: a bypass trigger sheds the class only when its value
      is at least ``threshold * trigger_scale``.
    """

    share: float
    trigger_scale: float


DEFAULT_PRIORITIES: Mapping[str, PriorityClass] = {
    "critical": PriorityClass(share=1.5, trigger_scale=3.0),
    "default": PriorityClass(share=1.0, trigger_scale=2.0),
    "sheddable": PriorityClass(share=0.5, trigger_scale=1.0),
}
"""Sheddable goes first (half the limit; bypass triggers at their threshold), default
gets exactly the BBR limit (2x threshold), critical goes last (1.5x the limit; 3x threshold)."""

PRIORITIES: tuple[str, ...] = tuple(DEFAULT_PRIORITIES)
"""The default class names, most important first; a limiter's own are ``Limiter.priorities``."""


@runtime_checkable
class Trigger(Protocol):
    """An extra shedding signal (e.g. event-loop lag), polled at admission time.

    ``check(now)`` returns the current value when firing (value >= threshold),
    else None; it must be cheap when the trigger has ``bypass_inflight=True``
    (it is then called on every ``acquire``). A non-bypass trigger counts as
    "hot" like the CPU signal; a bypass trigger sheds even when in-flight is
    within the limit (blocking handlers keep in-flight at 1).
    ``bypass_inflight`` is read once, when the trigger is added.

    A bypass trigger may also have a numeric ``quiet_until`` attribute (clock
    seconds; whether it has one is read when it is added): the limiter then
    skips ``check(now)`` while ``now < quiet_until``, so the trigger promises
    that such a call would return None and has nothing to do (``LoopLagMonitor``
    sets it after each check; -inf means "ask"). Without it, ``check`` runs on
    every ``acquire``.
    """

    @property
    def name(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    @property
    def bypass_inflight(self) -> bool: ...

    def check(self, now: float) -> float | None: ...


@dataclass(frozen=True)
class Reason:
    """Why a request was (or, in dry-run, would have been) shed. ``as_dict()`` is JSON-able.

    - ``trigger``: ``"cpu"``, ``"cool_off"``, ``"throttled"``, ``"pressure"``,
      ``"limit"`` (ungated limiter) or a ``Trigger``'s name (e.g. ``"loop_lag"``).
    - ``signal_name`` / ``signal_value`` / ``threshold``: what fired and its
      threshold (for bypass triggers, the threshold already scaled for the priority).
    - ``inflight``: in-flight before this request; ``max_inflight``: the
      algorithm's limit; ``priority_limit``: this priority's share of it.
    - ``cool_off``: the cool-off (from the last drop) was in force.
    - ``retry_after_s``: suggested client back-off.
    """

    trigger: str
    signal_name: str
    signal_value: float | None
    threshold: float | None
    inflight: int
    max_inflight: float
    priority: str
    resource: str
    cool_off: bool
    retry_after_s: float
    dry_run: bool
    priority_limit: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_object_new = object.__new__
_object_setattr = object.__setattr__


class _Class:
    """Mutable per-priority state: the policy and its current limit."""

    __slots__ = ("name", "share", "trigger_scale", "cap")

    def __init__(self, name: str, policy: PriorityClass) -> None:
        self.name = name
        self.share = policy.share
        self.trigger_scale = policy.trigger_scale
        self.cap = 1.0


class _Cell:
    """Counters of one (resource, priority) pair; to callers of ``Limiter.slot``, an opaque ``Slot``."""

    __slots__ = ("resource", "cls", "admitted", "dry_run_shed", "released", "shed", "shed_by", "dry_by")

    def __init__(self, resource: str, cls: _Class) -> None:
        self.resource = resource
        self.cls = cls
        self.admitted = 0  # admissions (tokens or slot admits)
        self.dry_run_shed = 0  # admissions a dry-run limiter would have shed
        self.released = 0  # releases of either kind
        self.shed = 0  # rejections
        self.shed_by: dict[str, int] = {}  # rejections by trigger
        self.dry_by: dict[str, int] = {}  # dry-run "would shed" by trigger

    @property
    def inflight(self) -> int:
        return self.admitted + self.dry_run_shed - self.released


class Token:
    """An admitted request. Release it exactly once with ``success()``, ``ignore()`` or ``dropped()``.

    Each returns the request's RT in seconds (from ``start``, read in ``acquire``,
    to the release, on the limiter's clock). Further releases are no-ops returning None. ``with token:`` / ``async with token:``
    release on exit: ``success()`` normally, ``dropped()`` on ``TimeoutError``,
    ``ignore()`` on any other exception. A token garbage-collected unreleased
    is released with ``ignore()`` and counted in ``tokens_leaked``.
    ``reason`` is set when a dry-run limiter would have shed this request.
    """

    __slots__ = ("_limiter", "_cell", "start", "reason")

    admitted = True

    def __init__(self, limiter: Limiter, cell: _Cell, start: float, reason: Reason | None = None) -> None:
        self._limiter = limiter
        self._cell: _Cell | None = cell
        self.start = start
        self.reason = reason

    @property
    def retry_after_s(self) -> float:
        return 0.0

    @property
    def released(self) -> bool:
        return self._cell is None

    @property
    def priority(self) -> str:
        return self._limiter_cell().cls.name

    @property
    def resource(self) -> str:
        return self._limiter_cell().resource

    def _limiter_cell(self) -> _Cell:
        cell = self._cell
        if cell is None:
            raise ValueError("token already released")
        return cell

    def success(self) -> float | None:
        """The request completed: its round-trip time feeds the limit algorithm.

        Returns that RT in seconds (acquire to now, on the limiter's clock), None if already released.
        """
        # Limiter.success(cell, start) written out (keep the two in step): one frame fewer per request.
        cell = self._cell
        if cell is None:
            return None
        self._cell = None
        lim = self._limiter
        now = lim._clock()
        inflight = lim._inflight
        lim._inflight = inflight - 1
        cell.released += 1
        rt_s = now - self.start
        lim._on_sample(now, rt_s, inflight, False)
        return rt_s

    def ignore(self) -> float | None:
        """The request failed for its own reasons: release without feeding its RT.

        Returns the RT all the same (for the caller's own metrics), None if already released.
        """
        cell = self._cell
        if cell is None:
            return None
        self._cell = None
        return self._limiter.ignore(cell, self.start)

    def dropped(self) -> float | None:
        """The request timed out or was dropped downstream: tell the algorithm it was dropped.

        Returns its RT in seconds, None if already released.
        """
        cell = self._cell
        if cell is None:
            return None
        self._cell = None
        return self._limiter.dropped(cell, self.start)

    def __del__(self) -> None:
        if self._cell is not None:
            try:
                self._limiter._tokens_leaked += 1
                self.ignore()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def _exit(self, exc: BaseException | None) -> None:
        if exc is None:
            self.success()
        elif isinstance(exc, TimeoutError):
            self.dropped()
        else:
            self.ignore()

    def __enter__(self) -> Token:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Token:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    def __repr__(self) -> str:
        state = "released" if self._cell is None else f"{self._cell.resource}/{self._cell.cls.name}"
        return f"<Token {state} start={self.start:.6f}{' dry_run' if self.reason else ''}>"


_new_token = object.__new__  # acquire's Token constructor without the __init__ frame

Slot = _Cell
"""An opaque (resource, priority) handle from ``Limiter.slot``, for ``admit`` and the slot releases."""


class Rejection:
    """A shed request: ``admitted`` is False and ``reason`` says why. Release methods are no-ops."""

    __slots__ = ("reason",)

    admitted = False

    def __init__(self, reason: Reason) -> None:
        self.reason = reason

    @property
    def retry_after_s(self) -> float:
        return self.reason.retry_after_s

    def success(self) -> None:
        return None

    def ignore(self) -> None:
        return None

    def dropped(self) -> None:
        return None

    def __enter__(self) -> Rejection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def __aenter__(self) -> Rejection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def __repr__(self) -> str:
        r = self.reason
        return f"<Rejection {r.trigger} {r.resource}/{r.priority} inflight={r.inflight} retry_after_s={r.retry_after_s:g}>"


Decision = Token | Rejection


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """The limiter's state at ``at`` (clock seconds), for metrics and debug endpoints.

    ``requests`` counts each request once by ``(resource, priority, outcome)``,
    outcome in ``"admitted" | "shed" | "dry_run_shed"``; ``shed_by_reason``
    counts real sheds by ``(resource, trigger)`` and ``dry_run_shed_by_reason``
    the dry-run ones. ``min_rt_s`` / ``max_pass_per_s`` are None when unknown
    (cold window, or an algorithm that does not measure them).
    """

    at: float
    inflight: int
    inflight_by_priority: dict[str, int]
    inflight_by_resource: dict[str, int]
    max_inflight: float
    priority_limits: dict[str, float]
    min_rt_s: float | None
    max_pass_per_s: float | None
    warm: bool
    algorithm: str
    cpu: CpuReading
    signal_name: str
    hot: bool
    hot_triggers: tuple[str, ...]
    cool_off: bool
    cool_off_until: float | None
    requests: dict[tuple[str, str, str], int]
    shed_by_reason: dict[tuple[str, str], int]
    dry_run_shed_by_reason: dict[tuple[str, str], int]
    dry_run: bool
    tokens_leaked: int
    triggers: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: tuple-keyed counters become nested dicts (resource -> priority -> outcome)."""
        requests: dict[str, dict[str, dict[str, int]]] = {}
        for (res, prio, outcome), n in sorted(self.requests.items()):
            requests.setdefault(res, {}).setdefault(prio, {})[outcome] = n
        return {
            "at": self.at,
            "inflight": self.inflight,
            "inflight_by_priority": dict(self.inflight_by_priority),
            "inflight_by_resource": dict(self.inflight_by_resource),
            "max_inflight": self.max_inflight,
            "priority_limits": dict(self.priority_limits),
            "min_rt_s": self.min_rt_s,
            "max_pass_per_s": self.max_pass_per_s,
            "warm": self.warm,
            "algorithm": self.algorithm,
            "cpu": asdict(self.cpu),
            "signal_name": self.signal_name,
            "hot": self.hot,
            "hot_triggers": list(self.hot_triggers),
            "cool_off": self.cool_off,
            "cool_off_until": self.cool_off_until,
            "requests": requests,
            "shed_by_reason": _nest(self.shed_by_reason),
            "dry_run_shed_by_reason": _nest(self.dry_run_shed_by_reason),
            "dry_run": self.dry_run,
            "tokens_leaked": self.tokens_leaked,
            "triggers": dict(self.triggers),
        }


def _nest(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (a, b), n in sorted(counts.items()):
        out.setdefault(a, {})[b] = n
    return out


def _cpu_value(r: CpuReading) -> float | None:
    """The reading's utilization compared with the threshold: the higher of fast and smoothed."""
    fast = r.utilization
    slow = r.utilization_smoothed
    return fast if slow is None or (fast is not None and fast >= slow) else slow


def _default_signal() -> CpuSignal:
    """The container CPU signal (a Sampler), created but not started: its owner starts it."""
    from flowctl import cpu  # imported here: nothing heavy at flowctl.limiter import

    make_signal: Callable[..., CpuSignal] | None = getattr(cpu, "make_signal", None)
    if make_signal is None:
        raise ConfigError("signal=None needs flowctl.cpu.make_signal; pass a CpuSignal explicitly")
    return make_signal("container")


def _default_algorithm() -> LimitAlgorithm:
    from flowctl.limit.bbr import Bbr

    return Bbr()


def _check_ratio(key: str, value: float | None, *, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{key} must be a number")
    if not (isinstance(value, (int, float)) and 0 < value and math.isfinite(value)):
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    return float(value)


class _Quiet(Trigger, Protocol):
    """A bypass trigger as ``acquire`` polls it: with ``quiet_until``."""

    quiet_until: float


class _NeverQuiet:
    """A bypass trigger without ``quiet_until``, seen through one that is always due."""

    __slots__ = ("_trigger", "quiet_until")

    bypass_inflight = True

    def __init__(self, trigger: Trigger) -> None:
        self._trigger = trigger
        self.quiet_until = -math.inf

    @property
    def name(self) -> str:
        return self._trigger.name

    @property
    def threshold(self) -> float:
        return self._trigger.threshold

    def check(self, now: float) -> float | None:
        return self._trigger.check(now)


def _gated(triggers: Sequence[Trigger]) -> tuple[_Quiet, ...]:
    """Bypass triggers as ``acquire`` polls them: each with a numeric ``quiet_until`` (read when added)."""
    return tuple(
        cast(_Quiet, t) if isinstance(getattr(t, "quiet_until", None), (int, float)) else _NeverQuiet(t)
        for t in triggers
    )


class Limiter:
    """BBR-style admission gated by a CPU signal, with priorities, triggers and reasons.

    ``signal=None`` creates the container CPU signal (``flowctl.cpu.make_signal``)
    without starting it: the caller owns sampling (``async with limiter.signal``).
    Until the signal has a reading, CPU is unknown and counts as not hot.
    ``algorithm`` defaults to ``flowctl.limit.bbr.Bbr()``. ``cpu_gate=False``
    makes the limiter "always hot": a plain concurrency limiter (reason
    ``"limit"``), as the Fixed and Gradient peers run in the benchmarks.
    """

    def __init__(
        self,
        signal: CpuSignal | None = None,
        algorithm: LimitAlgorithm | None = None,
        *,
        cpu_threshold: float = 0.8,
        cool_off_s: float = 1.0,
        dry_run: bool = False,
        throttled_threshold: float | None = None,
        pressure_threshold: float | None = None,
        triggers: Sequence[Trigger] = (),
        priorities: Mapping[str, PriorityClass] = DEFAULT_PRIORITIES,
        default_priority: str = "default",
        cpu_gate: bool = True,
        max_resources: int = 100,
        limit_refresh_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cool_reading: CpuReading | None = None  # a reading known not hot (see _decide)
        self._triggers: tuple[Trigger, ...] = ()
        self._bypass: tuple[Trigger, ...] = ()
        self._bypass_gated: tuple[_Quiet, ...] = ()  # what acquire polls: each has quiet_until
        self.cpu_threshold = cpu_threshold
        self.cool_off_s = cool_off_s
        self.throttled_threshold = throttled_threshold
        self.pressure_threshold = pressure_threshold
        self.dry_run = bool(dry_run)
        self.cpu_gate = cpu_gate
        if max_resources < 1:
            raise ConfigError(f"max_resources must be >= 1, got {max_resources!r}")
        self.max_resources = int(max_resources)
        if not (limit_refresh_s >= 0 and math.isfinite(limit_refresh_s)):
            raise ConfigError(f"limit_refresh_s must be >= 0, got {limit_refresh_s!r}")
        self.limit_refresh_s = float(limit_refresh_s)
        if not priorities:
            raise ConfigError("priorities must name at least one class")
        for pname, pc in priorities.items():
            if not (pc.share > 0 and pc.trigger_scale >= 1):
                raise ConfigError(f"priorities[{pname!r}] needs share > 0 and trigger_scale >= 1, got {pc!r}")
        if default_priority not in priorities:
            raise ConfigError(f"default_priority {default_priority!r} is not one of {sorted(priorities)}")
        self.signal = _default_signal() if signal is None else signal
        self.algorithm: LimitAlgorithm = _default_algorithm() if algorithm is None else algorithm
        self._clock = clock
        self._created_at = clock()
        self._max_inflight = self.algorithm.max_inflight
        self._on_sample = self.algorithm.on_sample
        self._classes: dict[str, _Class] = {n: _Class(n, pc) for n, pc in priorities.items()}
        self._default_class = self._classes[default_priority]
        self._limit = -1.0
        self._rate: float | None = None
        self._rate_stale = True
        self._refresh_at = -math.inf
        self._refresh(self._created_at)
        self._inflight = 0
        self._cells: dict[tuple[str, str], _Cell] = {}  # (resource, class name) -> counters
        # acquire's cache: (resource, None or class name) -> cell, for known resources only
        self._lookup: dict[tuple[str, str | None], _Cell] = {}
        self._resources: set[str] = set()
        self._cool_off_until = -math.inf  # last drop + cool_off_s; -inf until the first drop
        self._tokens_leaked = 0
        self._dry_reason: Reason | None = None  # the last dry-run shed's, for acquire's token
        self._warned_unknown_cpu = False
        for t in triggers:
            self.add_trigger(t)

    # -- configuration ------------------------------------------------------------

    @property
    def signal(self) -> CpuSignal:
        """The CPU signal read on the slow path (its name is read once, when set)."""
        return self._signal

    @signal.setter
    def signal(self, signal: CpuSignal) -> None:
        self._signal = signal
        self._signal_name = signal.name
        self._cool_reading = None

    @property
    def cpu_threshold(self) -> float:
        """Utilization (of the effective CPU limit) at or above which the CPU is hot."""
        return self._cpu_threshold

    @cpu_threshold.setter
    def cpu_threshold(self, value: float) -> None:
        self._cpu_threshold: float = _check_ratio("cpu_threshold", value, allow_none=False)  # type: ignore[assignment]
        self._cool_reading = None

    @property
    def throttled_threshold(self) -> float | None:
        """``throttled_ratio`` at or above which the limiter is hot; None (default) = off."""
        return self._throttled_threshold

    @throttled_threshold.setter
    def throttled_threshold(self, value: float | None) -> None:
        self._throttled_threshold = _check_ratio("throttled_threshold", value, allow_none=True)
        self._cool_reading = None

    @property
    def pressure_threshold(self) -> float | None:
        """``pressure_ratio`` (PSI some) at or above which the limiter is hot; None (default) = off."""
        return self._pressure_threshold

    @pressure_threshold.setter
    def pressure_threshold(self, value: float | None) -> None:
        self._pressure_threshold = _check_ratio("pressure_threshold", value, allow_none=True)
        self._cool_reading = None

    @property
    def cpu_gate(self) -> bool:
        """False: always hot, a plain concurrency limiter (reason ``"limit"``)."""
        return self._cpu_gate

    @cpu_gate.setter
    def cpu_gate(self, value: bool) -> None:
        self._cpu_gate = bool(value)
        self._cool_reading = None

    @property
    def cool_off_s(self) -> float:
        """Seconds after the last drop during which in-flight above the limit is still shed."""
        return self._cool_off_s

    @cool_off_s.setter
    def cool_off_s(self, value: float) -> None:
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"cool_off_s must be >= 0, got {value!r}")
        self._cool_off_s = float(value)
        self._retry_floor_s = max(self._cool_off_s, _MIN_RETRY_AFTER_S)

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """Every configured trigger, non-bypass first."""
        return self._triggers + self._bypass

    def add_trigger(self, trigger: Trigger) -> None:
        """Add an extra shedding signal (its ``bypass_inflight`` is read now)."""
        if not isinstance(trigger, Trigger):
            raise ConfigError(f"{trigger!r} does not implement the Trigger protocol")
        if trigger.bypass_inflight:
            self._bypass = (*self._bypass, trigger)
            self._bypass_gated = _gated(self._bypass)
        else:
            self._triggers = (*self._triggers, trigger)
        self._cool_reading = None

    def remove_trigger(self, trigger: Trigger) -> None:
        """Remove a trigger added before (no-op when absent)."""
        self._triggers = tuple(t for t in self._triggers if t is not trigger)
        self._bypass = tuple(t for t in self._bypass if t is not trigger)
        self._bypass_gated = _gated(self._bypass)
        self._cool_reading = None

    @property
    def inflight(self) -> int:
        """Admitted and not yet released requests, tokens and slot admits (all priorities and resources)."""
        return self._inflight

    @property
    def priorities(self) -> tuple[str, ...]:
        """The configured priority class names (``PRIORITIES`` unless ``priorities=`` was given)."""
        return tuple(self._classes)

    @property
    def default_priority(self) -> str:
        """The class ``acquire()`` counts a request in when its priority is None or unknown."""
        return self._default_class.name

    # -- admission ----------------------------------------------------------------

    def acquire(self, priority: str | None = None, resource: str = "default") -> Decision:
        """Admit (a ``Token``) or shed (a ``Rejection`` with its ``Reason``). Never raises.

        ``priority`` None means the configured ``default_priority``; a name that is
        not a configured class is counted and limited as the default class too.
        """
        # admit(cell) written out (keep the two in step): calling it would cost this public path
        # a frame per request (~25% of an acquire + release, bench.limiter_speed).
        now = self._clock()
        cell = self._lookup.get((resource, priority))
        if cell is None:
            cell = self._cell(resource, priority)
        inflight = self._inflight
        if inflight:
            if now >= self._refresh_at:
                self._refresh(now)
            if inflight >= cell.cls.cap and (
                # "busy but cool" shortcut: this very reading was found not hot, and no cool-off.
                self._signal.reading is not self._cool_reading or now < self._cool_off_until
            ):
                decision = self._over_limit(now, cell, inflight)
                if decision is not None:
                    return self._decided(decision, cell)
        for t in self._bypass_gated:  # the loop-lag trigger (written out: no helper frame)
            if now >= t.quiet_until:  # else its check would return None: no call
                v = t.check(now)
                if v is not None:
                    decision = self._bypass_fired(now, cell, inflight, t, v)
                    if decision is not None:
                        return self._decided(decision, cell)
        self._inflight = inflight + 1
        cell.admitted += 1
        # Token(self, cell, now) without the __init__ frame: on a server the per-request cost is
        # mostly memory touched, and a Python-level __init__ call costs more than these stores.
        token = _new_token(Token)
        token._limiter = self
        token._cell = cell
        token.start = now
        token.reason = None
        return token

    def _decided(self, decision: float | Rejection, cell: _Cell) -> Decision:
        """acquire's answer for a shed: the Rejection, or for a dry-run would-shed (admitted at
        ``decision``, already counted in-flight) a Token carrying the reason."""
        if isinstance(decision, Rejection):
            return decision
        return Token(self, cell, decision, self._dry_reason)

    def slot(self, resource: str = "default", priority: str | None = None) -> Slot:
        """The handle ``admit`` takes for this pair, resolved once (names bounded as in ``acquire``).

        For integrations that know a request's pair before it arrives (a route, a proxy).
        """
        cell = self._lookup.get((resource, priority))
        return cell if cell is not None else self._cell(resource, priority)

    def admit(self, slot: Slot) -> float | Rejection:
        """``acquire`` without a Token: the admission time (a float, clock seconds) or a ``Rejection``.

        An admitted request (including a dry-run "would shed") must be released exactly once
        with ``success``, ``ignore`` or ``dropped`` given the same slot and that time: nothing
        releases it for the caller. This is the per-request path of ``flowctl.aiohttp``.
        """
        cell = slot
        now = self._clock()
        inflight = self._inflight
        if inflight:
            if now >= self._refresh_at:
                self._refresh(now)
            if inflight >= cell.cls.cap and (
                # "busy but cool" shortcut: this very reading was found not hot, and no cool-off.
                self._signal.reading is not self._cool_reading or now < self._cool_off_until
            ):
                decision = self._over_limit(now, cell, inflight)
                if decision is not None:
                    return decision
        for t in self._bypass_gated:  # the loop-lag trigger (written out: no helper frame)
            if now >= t.quiet_until:  # else its check would return None: no call
                v = t.check(now)
                if v is not None:
                    decision = self._bypass_fired(now, cell, inflight, t, v)
                    if decision is not None:
                        return decision
        self._inflight = inflight + 1
        cell.admitted += 1
        return now

    def success(self, slot: Slot, start: float) -> float:
        """Release a request ``admit`` let in at ``start``; it completed: its RT feeds the algorithm.

        Returns that RT in seconds (``start`` to now, on the limiter's clock).
        """
        now = self._clock()
        inflight = self._inflight
        self._inflight = inflight - 1
        slot.released += 1
        rt_s = now - start
        self._on_sample(now, rt_s, inflight, False)
        return rt_s

    def ignore(self, slot: Slot, start: float) -> float:
        """Release a request ``admit`` let in at ``start``; it failed for its own reasons: the RT is
        not fed to the algorithm. Returns the RT all the same (for the caller's metrics)."""
        self._inflight -= 1
        slot.released += 1
        return self._clock() - start

    def dropped(self, slot: Slot, start: float) -> float:
        """Release a request ``admit`` let in at ``start``; it timed out or was dropped downstream:
        the algorithm is told. Returns its RT in seconds."""
        now = self._clock()
        inflight = self._inflight
        self._inflight = inflight - 1
        slot.released += 1
        rt_s = now - start
        self._on_sample(now, rt_s, inflight, True)
        return rt_s

    def _over_limit(self, now: float, cell: _Cell, inflight: int) -> float | Rejection | None:
        """In-flight is at this priority's limit: shed (or dry-run) if hot or in cool-off, else None."""
        cool = now < self._cool_off_until
        if not self._cpu_gate:
            return self._shed(now, cell, inflight, "limit", self.algorithm.name, None, None, cool)
        r = self._signal.reading
        value = _cpu_value(r)
        threshold = self._cpu_threshold
        if value is not None and value >= threshold:
            return self._shed(now, cell, inflight, "cpu", self._signal_name, value, threshold, cool)
        if value is None:
            self._warn_unknown_cpu(now)
        if value is None or self._triggers or self._throttled_threshold or self._pressure_threshold:
            hot = self._hot_beyond_cpu(now, r, every=False)
            if hot:
                return self._shed(now, cell, inflight, *hot[0], cool)
        if value is not None and not self._triggers:
            self._cool_reading = r  # not hot until the reading or the config changes
        if cool:
            return self._shed(now, cell, inflight, "cool_off", self._signal_name, value, threshold, cool)
        return None

    def _bypass_fired(self, now: float, cell: _Cell, inflight: int, t: _Quiet, v: float) -> float | Rejection | None:
        """A bypass trigger reported ``v``: shed (whatever in-flight is) at ``threshold * trigger_scale``
        of the request's priority, else None."""
        threshold = t.threshold * cell.cls.trigger_scale
        if v >= threshold:
            return self._shed(now, cell, inflight, t.name, t.name, v, threshold, now < self._cool_off_until)
        return None

    def _warn_unknown_cpu(self, now: float) -> None:
        """Warn once when the CPU signal still has no reading a while after start."""
        if not self._warned_unknown_cpu and now - self._created_at >= _UNKNOWN_CPU_WARN_AFTER_S:
            self._warned_unknown_cpu = True
            _log.warning(
                "flowctl limiter: CPU signal %r has no reading %.0f s after start while in-flight exceeds "
                "the limit; CPU counts as not hot (is the sampler started?)",
                self._signal_name,
                now - self._created_at,
            )

    def _hot_beyond_cpu(self, now: float, r: CpuReading, *, every: bool) -> list[tuple[str, str, float | None, float | None]]:
        """What besides CPU utilization is hot (throttled, pressure, non-bypass triggers), in that order.

        Each as ``(trigger, signal_name, value, threshold)``; only the first unless ``every``.
        """
        hot: list[tuple[str, str, float | None, float | None]] = []
        name = self._signal_name
        th = self._throttled_threshold
        if th is not None and r.throttled_ratio is not None and r.throttled_ratio >= th:
            hot.append(("throttled", name, r.throttled_ratio, th))
            if not every:
                return hot
        pt = self._pressure_threshold
        if pt is not None and r.pressure_ratio is not None and r.pressure_ratio >= pt:
            hot.append(("pressure", name, r.pressure_ratio, pt))
            if not every:
                return hot
        for t in self._triggers:
            v = t.check(now)
            if v is not None and v >= t.threshold:
                hot.append((t.name, t.name, v, t.threshold))
                if not every:
                    return hot
        return hot

    def _shed(
        self,
        now: float,
        cell: _Cell,
        inflight: int,
        trigger: str,
        signal_name: str,
        value: float | None,
        threshold: float | None,
        cool: bool,
    ) -> float | Rejection:
        """Record a shed (a Rejection) or a dry-run would-shed (admitted at ``now``: its reason is
        left in ``_dry_reason`` for ``acquire``), restart the cool-off, build the reason."""
        cls = cell.cls
        cap = cls.cap
        # Retry-After: the cool-off (shedding goes on that long after this drop), or the
        # time to drain the excess in-flight at the best observed rate if longer; >= 0.1 s.
        retry = self._retry_floor_s
        excess = inflight + 1 - cap
        if excess > 0:
            if self._rate_stale:  # once per limit refresh, and only when shedding
                self._rate_stale = False
                self._rate = self.algorithm.stats(now).max_pass_per_s
            rate = self._rate
            if rate and excess / rate > retry:
                retry = excess / rate
        dry_run = self.dry_run
        # Reason(...) without the frozen dataclass __init__, which costs one object.__setattr__
        # per field (~2 us here): the same frozen instance, its __dict__ set in one step.
        reason: Reason = _object_new(Reason)
        _object_setattr(
            reason,
            "__dict__",
            {
                "trigger": trigger,
                "signal_name": signal_name,
                "signal_value": value,
                "threshold": threshold,
                "inflight": inflight,
                "max_inflight": self._limit,
                "priority": cls.name,
                "resource": cell.resource,
                "cool_off": cool,
                "retry_after_s": retry,
                "dry_run": dry_run,
                "priority_limit": cap,
            },
        )
        self._cool_off_until = now + self._cool_off_s
        if not dry_run:
            cell.shed += 1
            by = cell.shed_by
            by[trigger] = by.get(trigger, 0) + 1
            return Rejection(reason)
        cell.dry_run_shed += 1
        by = cell.dry_by
        by[trigger] = by.get(trigger, 0) + 1
        self._inflight = inflight + 1
        self._dry_reason = reason
        return now

    def _cell(self, resource: str, priority: str | None) -> _Cell:
        """Find or create the counters for a pair, bounding names (None or unknown priority -> default)."""
        cls = None if priority is None else self._classes.get(priority)
        known = cls is not None or priority is None
        if cls is None:
            cls = self._default_class
        if resource not in self._resources:
            if len(self._resources) >= self.max_resources:
                resource, known = OTHER_RESOURCE, False
            else:
                self._resources.add(resource)
        key = (resource, cls.name)  # bounded: known resources (or OTHER_RESOURCE) x class names
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(resource, cls)
        if known:  # bounded too: known resources x (class names + None)
            self._lookup[(resource, priority)] = cell
        return cell

    def _refresh(self, now: float) -> None:
        """Re-read the algorithm's limit (at most every ``limit_refresh_s``) and the class caps."""
        self._refresh_at = now + self.limit_refresh_s
        self._rate_stale = True
        limit = self._max_inflight(now)
        if limit != self._limit:
            self._set_limit(limit)

    def _set_limit(self, limit: float) -> None:
        self._limit = limit
        for cls in self._classes.values():
            cls.cap = float(max(1, math.ceil(cls.share * limit - _ROUNDING_SLACK)))

    def _hot_now(self, now: float) -> list[str]:
        """Every signal that is hot now, by trigger name (for snapshots; no warnings)."""
        r = self._signal.reading
        value = _cpu_value(r)
        hot = ["cpu"] if value is not None and value >= self._cpu_threshold else []
        hot.extend(h[0] for h in self._hot_beyond_cpu(now, r, every=True))
        return hot

    # -- state --------------------------------------------------------------------

    def snapshot(self) -> LimiterSnapshot:
        """A consistent copy of the current state (O(resources x priorities), not for the hot path)."""
        now = self._clock()
        self._refresh(now)
        stats = self.algorithm.stats(now)
        by_prio = {name: 0 for name in self._classes}
        by_res: dict[str, int] = {}
        requests: dict[tuple[str, str, str], int] = {}
        shed_by: dict[tuple[str, str], int] = {}
        dry_by: dict[tuple[str, str], int] = {}
        for cell in self._cells.values():
            prio = cell.cls.name
            for trigger, n in cell.shed_by.items():
                shed_by[(cell.resource, trigger)] = shed_by.get((cell.resource, trigger), 0) + n
            for trigger, n in cell.dry_by.items():
                dry_by[(cell.resource, trigger)] = dry_by.get((cell.resource, trigger), 0) + n
            by_prio[prio] += cell.inflight
            by_res[cell.resource] = by_res.get(cell.resource, 0) + cell.inflight
            requests[(cell.resource, prio, "admitted")] = cell.admitted
            requests[(cell.resource, prio, "shed")] = cell.shed
            requests[(cell.resource, prio, "dry_run_shed")] = cell.dry_run_shed
        hot = self._hot_now(now)
        trig: dict[str, float | None] = {}
        for t in self.triggers:
            v = t.check(now)
            trig[t.name] = v
            if v is not None and v >= t.threshold and t.name not in hot:
                hot.append(t.name)
        cool_until = None if self._cool_off_until == -math.inf else self._cool_off_until
        return LimiterSnapshot(
            at=now,
            inflight=self._inflight,
            inflight_by_priority=by_prio,
            inflight_by_resource=by_res,
            max_inflight=stats.max_inflight,
            priority_limits={name: cls.cap for name, cls in self._classes.items()},
            min_rt_s=stats.min_rt_s,
            max_pass_per_s=stats.max_pass_per_s,
            warm=stats.warm,
            algorithm=self.algorithm.name,
            cpu=self._signal.reading,
            signal_name=self._signal_name,
            hot=bool(hot),
            hot_triggers=tuple(hot),
            cool_off=now < self._cool_off_until,
            cool_off_until=cool_until,
            requests=requests,
            shed_by_reason=shed_by,
            dry_run_shed_by_reason=dry_by,
            dry_run=self.dry_run,
            tokens_leaked=self._tokens_leaked,
            triggers=trig,
        )

    def __repr__(self) -> str:
        return (
            f"Limiter(signal={self._signal_name!r}, algorithm={self.algorithm!r}, cpu_threshold={self.cpu_threshold}, "
            f"inflight={self._inflight}, dry_run={self.dry_run})"
        )
