"""``LimiterBase``: how a ``Limiter`` is built and configured (its signal, policy, triggers and
classes); ``flowctl.limiter.core.Limiter`` adds the admission path on top. Split so that each file
holds one job: this one the wiring of the stages, core.py the decisions in order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from flowctl.errors import ConfigError
from flowctl.limit.base import LimitAlgorithm
from flowctl.limiter.cost import CpuCost
from flowctl.limiter.engagement import Engagement
from flowctl.limiter.gate import HotGate
from flowctl.limiter.offered import OfferedLoad
from flowctl.limiter.period import PeriodGate
from flowctl.limiter.partitions import DEFAULT_PRIORITIES, Partitions, PriorityClass
from flowctl.limiter.policy import DEFAULT_POLICY, Policy
from flowctl.limiter.stages import CeilingStage, LagStage, LimitStage, PeriodStage
from flowctl.limiter.triggers import Trigger
from flowctl.signal import CpuSignal

__all__ = ["LimiterBase"]


def _default_signal() -> CpuSignal:
    """The container CPU signal (a Sampler), created but not started: its owner starts it."""
    from flowctl.cpu import make_signal

    return make_signal("container")


def _default_algorithm() -> LimitAlgorithm:
    from flowctl.limit.bbr import Bbr

    return Bbr()


class LimiterBase:
    """The parts of a ``Limiter`` and its configuration; ``flowctl.limiter.core.Limiter`` states the
    contract (its constructor's arguments included)."""

    def __init__(
        self,
        signal: CpuSignal | None = None,
        algorithm: LimitAlgorithm | None = None,
        *,
        policy: Policy = DEFAULT_POLICY,
        priorities: Mapping[str, PriorityClass] = DEFAULT_PRIORITIES,
        triggers: Sequence[Trigger] = (),
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a flowctl.limiter.Policy, got {policy!r}")
        self._partitions = Partitions(priorities, policy.default_priority, policy.max_resources)
        self._lookup = self._partitions.lookup
        self.dry_run = bool(dry_run)
        self._clock = clock
        self._created_at = clock()
        self._gate = HotGate(_default_signal() if signal is None else signal, policy, self._created_at)
        self.algorithm: LimitAlgorithm = _default_algorithm() if algorithm is None else algorithm
        self._max_inflight = self.algorithm.max_inflight
        self._on_sample = self.algorithm.on_sample
        self._rescale: Callable[[float], None] | None = getattr(self.algorithm, "rescale", None)
        self._set_servers: Callable[[float], None] | None = getattr(self.algorithm, "set_servers", None)
        self._limit_cores: float | None = None  # the last reading's usable cores, to see changes
        self._engagement = Engagement(policy.cool_off_s)
        self._limit_stage = LimitStage(self._gate, self._engagement, self.algorithm.name)
        self._lag = LagStage()
        self._offered = OfferedLoad(policy.offered_sigmas, policy.offered_requests)
        self._wait_s = 0.0  # the wait budget, Policy.wait_rts min RTs (0: min RT unknown)
        self._period: PeriodStage | None = None
        self._ceiling = CeilingStage(policy)
        self._limit = -1.0
        self._rate: float | None = None
        self._rate_stale = True
        self._refresh_at = -math.inf
        self._inflight = 0
        self._sheds_seen = 0  # sheds (and dry-run would-sheds) as of the last observed reading
        self._queue_sheds = 0  # ceiling, idle period and lag sheds, and how many the last reading had seen
        self._shed_by_stage: dict[tuple[str, bool], int] = {}  # (stage, engaged when it shed): sheds and would-sheds
        self._queue_sheds_seen = 0
        self._observed_at = -math.inf  # when the last new reading was observed
        self._cost = CpuCost()
        self._admits = 0  # admissions ever (completions = admissions - in-flight), for the gate's overhead
        self._tokens_leaked = 0
        self._policy = policy
        self._apply(policy)
        self._refresh(self._created_at)
        for t in triggers:
            self.add_trigger(t)

    # -- configuration ------------------------------------------------------------

    @property
    def signal(self) -> CpuSignal:
        """The CPU signal the gate reads (its name is read once, when set)."""
        return self._gate.signal

    @signal.setter
    def signal(self, signal: CpuSignal) -> None:
        self._gate.signal = signal
        self._engagement.forget_hot()

    @property
    def policy(self) -> Policy:
        """Every constant of admission (``flowctl.limiter.Policy``). Setting a new one applies it at
        once; ``default_priority`` and ``max_resources`` cannot change after construction."""
        return self._policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        if not isinstance(value, Policy):
            raise ConfigError(f"policy must be a flowctl.limiter.Policy, got {value!r}")
        old = self._policy
        if (value.default_priority, value.max_resources) != (old.default_priority, old.max_resources):
            raise ConfigError("default_priority and max_resources are fixed when the Limiter is built")
        self._policy = value
        self._apply(value)
        self._engagement.forget_hot()

    def _apply(self, policy: Policy) -> None:
        """Give the policy to the gate and the stages."""
        self._gate.policy = policy
        self._may_shed = True  # the gate starts over: busy until readings say otherwise
        self._engagement.cool_off_s = policy.cool_off_s
        self._retry_floor_s = max(policy.cool_off_s, policy.min_retry_after_s)
        self._ceiling.policy = policy
        self._offered.sigmas, self._offered.window_requests = policy.offered_sigmas, policy.offered_requests
        self._lag.lag_requests, self._lag.lag_cap_s = policy.lag_requests, policy.lag_cap_s
        self._lag.within_requests = policy.lag_within_requests
        self._lag.scale_to(self._cost.cpu_per_request_s, self._ceiling.min_rt_s)
        if policy.period_gate:
            if self._period is None:
                self._period = PeriodStage(policy)
            self._period.policy = policy
            self._period.quota_at = -math.inf
        else:
            self._period = None
        self._refresh_at = -math.inf

    @property
    def period_gate(self) -> PeriodGate | None:
        """The period gate pacing admissions while engaged (None: off), for its state."""
        return self._period.gate if self._period is not None else None

    @property
    def cool_off_s(self) -> float:
        """Seconds after the last shed during which in-flight above the limit is still shed."""
        return self._engagement.cool_off_s

    @property
    def max_resources(self) -> int:
        return self._partitions.max_resources

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """Every configured trigger, non-bypass first."""
        return self._gate.triggers + self._lag.triggers

    def add_trigger(self, trigger: Trigger) -> None:
        """Add an extra shedding signal (its ``bypass_inflight`` is read now)."""
        if not isinstance(trigger, Trigger):
            raise ConfigError(f"{trigger!r} does not implement the Trigger protocol")
        if trigger.bypass_inflight:
            self._set_bypass((*self._lag.triggers, trigger))
        else:
            self._gate.set_triggers((*self._gate.triggers, trigger))

    def remove_trigger(self, trigger: Trigger) -> None:
        """Remove a trigger added before (no-op when absent)."""
        self._gate.set_triggers(tuple(t for t in self._gate.triggers if t is not trigger))
        self._set_bypass(tuple(t for t in self._lag.triggers if t is not trigger))

    def _set_bypass(self, bypass: tuple[Trigger, ...]) -> None:
        self._lag.set(bypass)
        if self._period is not None:
            self._period.set_hooks(bypass)

    @property
    def inflight(self) -> int:
        """Admitted and not yet released requests, tokens and slot admits (all priorities and resources)."""
        return self._inflight

    @property
    def priorities(self) -> tuple[str, ...]:
        """The configured priority class names (``PRIORITIES`` unless ``priorities=`` was given)."""
        return tuple(self._partitions.by_name)

    @property
    def default_priority(self) -> str:
        """The class a request is counted in when its priority is None or unknown."""
        return self._partitions.default.name

    def _refresh(self, now: float) -> None:
        """Re-read the algorithm's limit (at most every ``limit_refresh_s``) and the class limits."""
        self._refresh_at = now + self._policy.limit_refresh_s
        self._rate_stale = True
        limit = self._max_inflight(now)
        floor = self._ceiling.busy_floor
        if limit < floor:
            limit = floor
        if limit != self._limit:
            self._limit = limit
            self._partitions.set_limit(limit)
