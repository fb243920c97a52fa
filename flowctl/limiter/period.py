"""The period gate: admit a request only while the group's current CFS period has quota left for it.

CFS gives a group ``quota_s`` of CPU per ``period_s`` (100 ms by default).
Once the period's quota is spent, the group is frozen until the next period:
every request in flight, and in-process every request still waiting to be
read, then waits up to ``period_s - quota_s / cores``. No concurrency limit
prevents that (a service busy at a limit of 1 still spends its quota early),
and no utilization reading sees it in time (a reading spans a whole period).
The gate reads the group's own counters at admission, at most every 0.5 ms
(``usage``, ``nr_periods``, ``nr_throttled`` from kept-open files; a read,
update and check took 9 µs median on cgroup v1 here) and admits while::

    used this period + work still to come this period  <=  allowed

- *Used this period*: usage now minus usage at the period's start. A change of
  ``nr_periods`` between two reads says a period began between them; the
  usage at the boundary is interpolated between the two reads.
- *Work still to come*: the *overhead* for the part of the period left, plus,
  while the limiter is engaged, this request's and the in-flight requests'
  ``cpu_per_request_s`` (``CpuCost``); no more than the period's wall time
  left on its cores (work that spills into the next period is counted there).
  (Counting in-flight requests at half, as partly done, was measured and not
  kept: 4x yielding goodput 0.654 and 0.635 against 0.723 and 0.633.)
  The overhead is what each period spent beyond its completions' cost (an
  EMA over periods, but up at once in a period the gate paced): answering
  sheds when the limiter runs in the group, the runtime's own work.
  Reserving it is what keeps an in-process limiter's own rejections from
  spending the quota after the gate has closed. No more than
  ``Policy.overhead_cap`` of the quota is reserved for it: beyond that, throttling
  cannot be avoided, and reserving it all would admit nothing (a livelock:
  goodput 0 under a closed-loop flood). The gate then still admits early in
  each period, and such throttled periods do not raise the margin. (Stepping
  aside instead, the first design, made the gate flap at 4x of a 0.3 CPU
  group, whose sheds spend about half its quota: whatever ran when the
  period's quota was spent waited through the freeze.)
- *Allowed*: while the limiter is engaged, ``quota_s * (1 - margin)`` times the
  class's level factor ``1 - 0.5 * level`` (at most the whole quota):
  default ``1 - margin``, sheddable three quarters of that. The margin learns
  what the rest misses (the kernel's 5 ms slices, the reads' own lag): a
  period the gate paced that ended throttled raises it by ``Policy.margin_up``
  (unless its overhead jumped past the reserve and the margin: the onset of
  an overload, whose first sheds nothing had reserved; at 0.3 CPU that took
  the margin from 0.1 to 0.385 in the first second), one in which the gate
  shed without being throttled lowers it by ``Policy.margin_down``, within ``[0,
  Policy.max_margin]``. Not engaged: against the whole quota, counting the
  overhead still to come and only the in-flight requests beyond ``slack`` (the
  ceiling's chance excess, what Poisson arrivals put in flight at capacity):
  a request admitted past that would wait for the next period. So 0.9x keeps
  its chance bursts, and an overload's onset, whose in-flight climbs past
  them, is paced before the group's first freeze.

Each read also reports a *freeze*: when the period that ended was throttled
and the reads bracket the freeze closely, ``update`` returns how long the
group was frozen (``throttled_time``), the wait of the requests read now.

Unlike a token bucket it cannot spend two periods' quota across a boundary,
and it needs no rate: the period's usage is read, not predicted. Pure: time
and counters are passed in (``BandwidthReader`` reads them).
"""

from __future__ import annotations

import math

from flowctl.limiter.policy import DEFAULT_POLICY, Policy

__all__ = ["PeriodGate"]

_GAP_S = 1.0  # reads further apart than this start over (the counters' history is stale)


class PeriodGate:
    """Per-period quota accounting of one CFS group (see the module). Not thread-safe."""

    __slots__ = ("quota_s", "period_s", "cores", "margin", "overhead_s", "shed_in_period", "_at", "_usage",
                 "_periods", "_throttled", "_throttled_s", "_done", "_base", "_start", "_done_at_start", "_paced",
                 "margin_up", "margin_down", "max_margin", "overhead_cap", "freeze_seen_s", "wait_budget_s",
                 "_spilled")  # fmt: skip

    def __init__(self, policy: Policy = DEFAULT_POLICY) -> None:
        self.quota_s: float | None = None
        self.period_s: float | None = None
        self.cores = 1  # the cores the group's work can run on at once
        self.margin = float(policy.period_margin)
        self.margin_up, self.margin_down = policy.margin_up, policy.margin_down
        self.max_margin, self.overhead_cap = policy.max_margin, policy.overhead_cap
        self.freeze_seen_s = policy.freeze_seen_s
        self.wait_budget_s = 0.0  # a request that would wait this long or less for the next period is admitted
        self._spilled = False  # the gate admitted work into the next period in the current one
        self.overhead_s = 0.0  # CPU per period not explained by completions (EMA over periods)
        self.shed_in_period = False
        self._paced = False  # the gate decided an engaged admission in the current period
        self._at: float | None = None  # the last read
        self._usage = 0.0
        self._periods = 0
        self._throttled = 0
        self._throttled_s: float | None = None
        self._done = 0
        self._base: float | None = None  # usage at the current period's start (estimated)
        self._start = -math.inf  # when the current period started (estimated)
        self._done_at_start = 0  # completions when it started

    def set_quota(self, quota_s: float | None, period_s: float | None, cores: int = 1) -> None:
        """The group's own quota and period in seconds (None: no quota, the gate admits everything)."""
        if quota_s != self.quota_s or period_s != self.period_s:
            self._at = self._base = None  # a new quota or period: start over
        self.quota_s, self.period_s, self.cores = quota_s, period_s, max(1, cores)

    def update(
        self, now: float, usage_s: float, periods: int, throttled: int, done: int = 0, cpu_per_request_s: float | None = None,
        throttled_s: float | None = None,
    ) -> float:  # fmt: skip
        """A read of the group's counters at ``now`` (seconds, the gate's clock), with the requests
        completed so far (``done``), their learned cost (for the overhead) and the group's total
        frozen time (``throttled_s``, None: unknown).

        Returns how long the group was frozen between the last read and this one when the two
        reads bracket the freeze closely (no more than ``Policy.freeze_seen_s`` of the time between them
        is not the freeze: this read comes at most that long after it ended), else 0.0. That is
        the freeze the requests read now have waited through."""
        at, period = self._at, self.period_s
        frozen = 0.0
        last_throttled_s, self._throttled_s = self._throttled_s, throttled_s
        if (at is not None and throttled > self._throttled and throttled_s is not None and last_throttled_s is not None
                and throttled_s > last_throttled_s and now - at <= throttled_s - last_throttled_s + self.freeze_seen_s):
            frozen = throttled_s - last_throttled_s  # fmt: skip
        if at is None or period is None or periods < self._periods or not (0 <= now - at <= _GAP_S):
            # No history (or a reset counter, or a long gap): call the period started now.
            self._base, self._start, self._done_at_start = usage_s, now, done
        elif periods != self._periods:
            # A period began between the reads: interpolate the usage at the boundary.
            boundary = max((at + now) / 2, now - period / 2)
            span = now - at
            frac = (boundary - at) / span if span > 0 else 1.0
            base = self._usage + frac * (usage_s - self._usage)
            surprise = False  # the overhead grew past what was reserved for it (and the margin)
            if self._base is not None and cpu_per_request_s:
                # What the ended period(s) spent beyond their completions' cost: answering sheds when
                # the limiter runs in the group, the runtime's own work, a cost learned low. An
                # EMA; while the gate paces, up at once (the onset of an overload: its sheds were
                # not reserved). Not pacing, one busy period must not make the unengaged check shed
                # (at 0.9x with 50 SSE streams, whose events count here, it shed 2.2%).
                spent = base - self._base
                n = max(1, periods - self._periods)
                extra = max(0.0, spent - (done - self._done_at_start) * cpu_per_request_s) / n
                surprise = extra > self.overhead_s + self.margin * (self.quota_s or 0.0)
                if self._paced and extra > self.overhead_s:
                    self.overhead_s = extra
                else:
                    self.overhead_s += 0.5 * (extra - self.overhead_s)
            self._base, self._start, self._done_at_start = base, boundary, done
            if throttled != self._throttled:
                # Throttled: the margin grows, unless the overhead's growth explains it (now learned)
                # or it is past what the gate reserves (throttling is then the sheds' doing).
                # Only a period the gate paced says anything about the margin: unpaced, the load
                # alone spent the quota (at 0.9x with 50 WebSockets, that took it from 0.1 to 0.245).
                if (self._paced and not surprise and not self._spilled
                        and self.overhead_s < self.overhead_cap * (self.quota_s or 0.0)):
                    self.margin = min(self.max_margin, self.margin + self.margin_up)
            elif self.shed_in_period:
                self.margin = max(0.0, self.margin - self.margin_down)
            self.shed_in_period = self._paced = self._spilled = False
        elif now - self._start > 1.5 * period:
            # No period counted for longer than a period: the group idled (its timer stopped).
            # Count everything since the last read in the period that runs now.
            self._base, self._start, self._done_at_start = self._usage, at, self._done
        self._at, self._usage, self._periods, self._throttled, self._done = now, usage_s, periods, throttled, done
        return frozen

    @property
    def read_at(self) -> float:
        """When the counters were last read (-inf: not yet, or forgotten)."""
        return -math.inf if self._at is None else self._at

    def used_s(self) -> float | None:
        """CPU seconds the group has used in the current period as of the last read (None: unknown)."""
        return None if self._base is None else self._usage - self._base

    def allows(
        self, now: float, inflight: int, cpu_per_request_s: float | None, level: float = 0.0, *, strict: bool = True,
        slack: float = math.inf,
    ) -> bool:
        """Whether a request of a class at ``level`` fits in the current period's quota
        (True when there is no quota or no read yet). ``strict`` False (the limiter is not
        engaged): against the whole quota, counting the overhead still to come and the in-flight
        requests beyond ``slack`` (a count; inf: none). A refusal is remembered for the margin."""
        quota, period, base = self.quota_s, self.period_s, self._base
        if quota is None or period is None or base is None:
            return True
        left_s = max(0.0, self._start + period - now)
        # The overhead still to come in this period, reserved up to the overhead cap of the quota: when
        # answering sheds alone spends more, throttling cannot be avoided, and reserving it all would
        # admit nothing (measured: a closed-loop flood in-process, 2 completions/s).
        need = min(self.overhead_s, self.overhead_cap * quota) * left_s / period
        if cpu_per_request_s:
            # not engaged, the in-flight Poisson arrivals bring by chance (``slack``) are not counted
            counted = inflight + 1 if strict else max(0.0, inflight + 1 - slack)
            need += min(counted * cpu_per_request_s, left_s * self.cores)
        allowed = quota
        if strict:
            self._paced = True
            keep = 1.0 - self.margin
            factor = 1.0 - 0.5 * level
            allowed = min(quota, quota * keep * factor)
        over = self._usage - base + need - allowed
        if over <= 0:
            return True
        # It does not fit in this period: it waits for the next one (the rest of this period), and there
        # behind the work that did not fit either. Within the wait budget, that is a short queue, not a shed.
        if left_s + over / self.cores <= self.wait_budget_s:
            self._spilled = True
            return True
        self.shed_in_period = True
        return False
