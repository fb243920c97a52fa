"""``Policy``: every constant of admission, in one frozen value (docs/limiter.md, "Knobs").

A ``Limiter`` takes one ``Policy``; ``replace(policy, cpu_threshold=0.9)`` makes a
variant. Nothing else in ``flowctl.limiter`` holds a tunable number: each field
says its unit, what it trades and which metric shows it at work. Defaults change
only with matrix runs on two seeds that show the change helps (docs/decisions.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from flowctl.errors import ConfigError

__all__ = ["DEFAULT_POLICY", "Policy", "limiter_kwargs"]


def _positive(name: str, value: object, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value >= 0 if allow_zero else value > 0):  # type: ignore[operator]
        raise ConfigError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Policy:
    """The constants of admission. Ratios are fractions; times are seconds.

    Engagement (the limiter sheds over the CPU limit only while engaged):

    - ``cpu_threshold``: utilization of the usable cores at or over which the CPU is hot
      (fast reading on ``hot_samples`` readings in a row, or the smoothed one).
    - ``hot_samples``: consecutive fast readings over the threshold that make it hot (one
      reading is enough when the ceiling or loop lag shed since the reading before).
    - ``cool_off_s``: engagement lasts this long after the last shed.
    - ``cool_fraction``: a fast reading under ``cool_fraction * cpu_threshold`` (with the
      smoothed one under the threshold) ends the cool-off early; 0 = never early.
    - ``throttled_threshold`` / ``pressure_threshold``: ``throttled_ratio`` / PSI ``some``
      at or over which the limiter is hot too (None: off).
    - ``offered_sigmas``: arrivals over a window of ``offered_requests`` requests at the group's CPU
      capacity that exceed it by more than this many standard deviations of chance (Poisson:
      ``sqrt(expected)``) engage the limiter (``flowctl.limiter.offered``); None: off.
    - ``cpu_gate``: False makes the limiter always engaged: a plain concurrency limiter.
    - ``freeze_engages``: a CFS freeze of the group this long (fraction of the period) engages.
    - ``busy_fraction``: no stage but lag sheds while the smoothed utilization (the sampler's 1 s
      EMA) is under ``busy_fraction * cpu_threshold``: a group that was not busy over the last
      second is not overloaded, whatever its in-flight count or a spike says. 0 (the default until
      the matrix shows 0.5 helps on two seeds: docs/decisions.md): no such rule.

    Limits:

    - ``queue_allowance``: requests allowed to queue above the pipe (CPU capacity x min RT)
      before the always-on ceiling sheds (reason ``queue``); None: no ceiling.
    - ``pipe_sigmas``: the ceiling also admits this many standard deviations of the in-flight a
      group at capacity carries by chance (Poisson arrivals: ``sqrt(pipe)``) above the pipe, so a
      handler that waits on I/O (a pipe of many requests) is not shed by arrival noise; 0: none.
    - ``busy_floor``: the engaged limit never drops under the requests that keep the group's
      cores busy while it runs (min RT / CPU per request x cores).
    - ``period_gate``: pace admissions inside each CFS period of a group with a quota.
    - ``lag_requests``: the lag stage's threshold is this many requests' CPU (``cpu_per_request_s``),
      at least the trigger's own threshold (``LoopLagMonitor``: 5 ms) and at most ``lag_cap_s``
      (also while the cost is unknown): a fast handler's queue is shed before it has waited a slow
      one's budget. None: the trigger's threshold only.
    - ``lag_cap_s``: the most ``lag_requests`` may set the threshold to.
    - ``lag_within_requests``: while the last window of arrivals was within the capacity
      (``OfferedLoad.within``), the cap is at least this many requests' CPU: at 0.9x a slow blocking
      handler's chance queue waits a few of its requests, more than ``lag_cap_s`` (a 13 ms handler:
      26 ms, not 15); over the capacity the cap holds. None: the cap always.
    - ``limit_refresh_s``: how often the algorithm's limit is re-read on the admission path.
    - ``rescale_fraction``: a change of the usable cores beyond this tells the algorithm.

    Period gate (``flowctl.limiter.period``):

    - ``period_margin``: the fraction of each period's quota held back at start (learned).
    - ``margin_up`` / ``margin_down``: its steps per throttled paced period / per shed one.
    - ``max_margin``: its bound. ``overhead_cap``: the most of the quota reserved for overhead.
    - ``freeze_seen_s``: a freeze counts only when the reads around it are this close to it.
    - ``wait_rts``: a request that does not fit in the current period's quota is admitted all the
      same when it would wait no longer than this many min RTs for the next period (the rest of
      this period, then the work ahead of it that did not fit either): at 0.9x a period overflows
      by chance, and a short wait is no overload. Only while the last window of arrivals was within
      the capacity (``OfferedLoad.within``). In-process the wait is a freeze of our own event loop
      too: the lag budget of a default request (at least 2 min RTs) is at least the wait, so what
      is read after it is not shed as late. 0: every request that does not fit is shed.
    - ``bandwidth_read_s``: the group's counters are read at most this often while pacing.
    - ``idle_read_s``: in-process with nothing in flight, read this often to see freezes.

    Answers and bookkeeping:

    - ``min_retry_after_s``: the least Retry-After given with a shed.
    - ``default_priority``: the class of a request with no or an unknown priority.
    - ``max_resources``: distinct resource names counted before new ones share ``other``.
    """

    cpu_threshold: float = 0.8
    hot_samples: int = 3
    cool_off_s: float = 1.0
    cool_fraction: float = 0.75
    throttled_threshold: float | None = None
    pressure_threshold: float | None = None
    cpu_gate: bool = True
    offered_sigmas: float | None = 3.0
    offered_requests: float = 10.0
    freeze_engages: float = 0.2
    busy_fraction: float = 0.0
    queue_allowance: int | None = 3
    pipe_sigmas: float = 2.0
    busy_floor: bool = True
    period_gate: bool = True
    lag_requests: float | None = 3.0
    lag_cap_s: float = 0.015
    lag_within_requests: float | None = 2.0
    limit_refresh_s: float = 0.01
    rescale_fraction: float = 0.1
    period_margin: float = 0.1
    margin_up: float = 0.05
    margin_down: float = 0.005
    max_margin: float = 0.5
    overhead_cap: float = 0.5
    freeze_seen_s: float = 0.05
    wait_rts: float = 2.0
    bandwidth_read_s: float = 0.0005
    idle_read_s: float = 0.005
    min_retry_after_s: float = 0.1
    default_priority: str = "default"
    max_resources: int = 100

    def __post_init__(self) -> None:
        _positive("cpu_threshold", self.cpu_threshold)
        _positive("throttled_threshold", self.throttled_threshold, allow_none=True)
        _positive("offered_sigmas", self.offered_sigmas, allow_none=True, allow_zero=True)
        _positive("offered_requests", self.offered_requests)
        _positive("pressure_threshold", self.pressure_threshold, allow_none=True)
        if not (isinstance(self.hot_samples, int) and self.hot_samples >= 1):
            raise ConfigError(f"hot_samples must be an integer >= 1, got {self.hot_samples!r}")
        if not (isinstance(self.cool_fraction, (int, float)) and 0 <= self.cool_fraction < 1):
            raise ConfigError(f"cool_fraction must be in [0, 1), got {self.cool_fraction!r}")
        for name in ("cool_off_s", "limit_refresh_s", "rescale_fraction", "period_margin", "margin_up", "margin_down",
                     "max_margin", "overhead_cap", "freeze_seen_s", "bandwidth_read_s", "idle_read_s",
                     "min_retry_after_s", "freeze_engages", "busy_fraction", "pipe_sigmas", "wait_rts"):  # fmt: skip
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("lag_requests", self.lag_requests, allow_none=True)
        _positive("lag_cap_s", self.lag_cap_s)
        _positive("lag_within_requests", self.lag_within_requests, allow_none=True)
        qa = self.queue_allowance
        if qa is not None and not (isinstance(qa, int) and not isinstance(qa, bool) and qa >= 0):
            raise ConfigError(f"queue_allowance must be an integer >= 0 or None, got {qa!r}")
        if not (isinstance(self.max_resources, int) and self.max_resources >= 1):
            raise ConfigError(f"max_resources must be >= 1, got {self.max_resources!r}")
        for name in ("cpu_threshold", "cool_off_s", "limit_refresh_s"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("cpu_gate", "busy_floor", "period_gate"):
            object.__setattr__(self, name, bool(getattr(self, name)))


DEFAULT_POLICY = Policy()
"""The defaults every integration uses (the aiohttp middleware, the sidecar, the library)."""

POLICY_FIELDS = frozenset(f.name for f in fields(Policy))


def limiter_kwargs(options: Mapping[str, Any], base: Policy = DEFAULT_POLICY) -> dict[str, Any]:
    """``Limiter`` keywords from flat options: ``Policy`` field names (``cpu_threshold=0.9``) become a
    ``policy`` (``base`` with them replaced); the rest (``dry_run``, ``priorities``, ...) pass through."""
    policy_fields = {k: v for k, v in options.items() if k in POLICY_FIELDS}
    out = {k: v for k, v in options.items() if k not in POLICY_FIELDS}
    if policy_fields:
        if "policy" in out:
            raise ConfigError(f"give policy= or its fields {sorted(policy_fields)}, not both")
        out["policy"] = replace(base, **policy_fields)
    return out
