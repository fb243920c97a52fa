"""``LimiterSnapshot``: a consistent copy of a limiter's state, for metrics and debug endpoints."""

from __future__ import annotations

from collections.abc import Mapping
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from typing import TYPE_CHECKING

from flowctl.signal import CpuReading

if TYPE_CHECKING:
    from flowctl.limit.base import LimitAlgorithm
    from flowctl.limiter.gate import HotGate
    from flowctl.limiter.partitions import Partitions
    from flowctl.limiter.period import PeriodGate
    from flowctl.limiter.triggers import Trigger

__all__ = ["LimiterSnapshot", "snapshot_of"]


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
    priority_ceilings: dict[str, float] = field(default_factory=dict)
    cpu_per_request_s: float | None = None
    period_margin: float | None = None  # the period gate's learned margin (None: off, or no quota to pace by)
    period_overhead_s: float | None = None  # and its learned overhead, CPU seconds per period
    #: the in-flight requests Poisson arrivals bring by chance at capacity (pipe + pipe_sigmas * sqrt(pipe));
    #: not engaged, the period gate counts only the in-flight work beyond it (None: unknown)
    chance_inflight: float | None = None
    #: sheds and dry-run would-sheds by the stage that shed and whether the limiter was engaged then
    shed_by_stage: dict[tuple[str, bool], int] = field(default_factory=dict)
    #: how often the limiter went from not engaged to engaged, by cause (hot, shed, freeze)
    engagements: dict[str, int] = field(default_factory=dict)
    engaged: bool = False  # the limiter's one state (hot, or in its cool-off): stages 2-3 shed by the limit
    #: the lag stage's budget before the class's scale, seconds (None: no budget of its own, the trigger's
    #: threshold only), and whether the last window of arrivals was within the capacity (it is looser then)
    lag_budget_s: float | None = None
    arrivals_within: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: tuple-keyed counters become nested dicts (resource -> priority -> outcome)."""
        requests: dict[str, dict[str, dict[str, int]]] = {}
        for (res, prio, outcome), n in sorted(self.requests.items()):
            requests.setdefault(res, {}).setdefault(prio, {})[outcome] = n
        by_stage: dict[str, dict[str, int]] = {}
        for (stage, engaged), n in sorted(self.shed_by_stage.items()):
            by_stage.setdefault(stage, {})["engaged" if engaged else "not_engaged"] = n
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
            "priority_ceilings": {k: (None if v == math.inf else v) for k, v in self.priority_ceilings.items()},
            "cpu_per_request_s": self.cpu_per_request_s,
            "period_margin": self.period_margin,
            "period_overhead_s": self.period_overhead_s,
            "chance_inflight": self.chance_inflight,
            "shed_by_stage": by_stage,
            "engagements": dict(self.engagements),
            "engaged": self.engaged,
            "lag_budget_s": self.lag_budget_s,
            "arrivals_within": self.arrivals_within,
        }


def _nest(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (a, b), n in sorted(counts.items()):
        out.setdefault(a, {})[b] = n
    return out




def snapshot_of(now: float, algorithm: LimitAlgorithm, partitions: Partitions, gate: HotGate,
                triggers: tuple[Trigger, ...], *, inflight: int, engaged_until: float, cool_off_until: float,
                dry_run: bool, tokens_leaked: int, cpu_per_request_s: float | None,
                period: PeriodGate | None, chance_inflight: float = math.inf,
                shed_by_stage: dict[tuple[str, bool], int] | None = None,
                engagements: dict[str, int] | None = None, lag_budget_s: float | None = None,
                arrivals_within: bool = False) -> LimiterSnapshot:  # fmt: skip
    """The snapshot ``Limiter.snapshot`` returns, built from its parts (reads only: triggers are polled,
    nothing is observed)."""
    stats = algorithm.stats(now)
    by_prio = {name: 0 for name in partitions.by_name}
    by_res: dict[str, int] = {}
    requests: dict[tuple[str, str, str], int] = {}
    shed_by: dict[tuple[str, str], int] = {}
    dry_by: dict[tuple[str, str], int] = {}
    for slot in partitions.slots.values():
        prio, res = slot.partition.name, slot.resource
        for trigger, n in slot.shed_by.items():
            shed_by[(res, trigger)] = shed_by.get((res, trigger), 0) + n
        for trigger, n in slot.dry_by.items():
            dry_by[(res, trigger)] = dry_by.get((res, trigger), 0) + n
        by_prio[prio] += slot.inflight
        by_res[res] = by_res.get(res, 0) + slot.inflight
        requests[(res, prio, "admitted")] = slot.admitted
        requests[(res, prio, "shed")] = slot.shed
        requests[(res, prio, "dry_run_shed")] = slot.dry_run_shed
    hot = gate.every_hot(now)
    trig: dict[str, float | None] = {}
    for t in triggers:
        v = t.check(now)
        trig[t.name] = v
        if v is not None and v >= t.threshold and t.name not in hot:
            hot.append(t.name)
    return LimiterSnapshot(
        at=now,
        inflight=inflight,
        inflight_by_priority=by_prio,
        inflight_by_resource=by_res,
        max_inflight=stats.max_inflight,
        priority_limits=partitions.limits(),
        min_rt_s=stats.min_rt_s,
        max_pass_per_s=stats.max_pass_per_s,
        warm=stats.warm,
        algorithm=algorithm.name,
        cpu=gate.signal.reading,
        signal_name=gate.signal_name,
        hot=bool(hot),
        hot_triggers=tuple(hot),
        cool_off=now < cool_off_until,
        cool_off_until=None if cool_off_until == -math.inf else cool_off_until,
        requests=requests,
        shed_by_reason=shed_by,
        dry_run_shed_by_reason=dry_by,
        dry_run=dry_run,
        tokens_leaked=tokens_leaked,
        triggers=trig,
        priority_ceilings=partitions.ceilings(),
        cpu_per_request_s=cpu_per_request_s,
        period_margin=period.margin if period is not None else None,
        period_overhead_s=period.overhead_s if period is not None else None,
        chance_inflight=chance_inflight if math.isfinite(chance_inflight) else None,
        shed_by_stage=dict(shed_by_stage or {}),
        engagements=dict(engagements or {}),
        engaged=now < engaged_until,
        lag_budget_s=lag_budget_s,
        arrivals_within=arrivals_within,
    )
