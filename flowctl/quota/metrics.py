"""Quota metrics, counted with plain ints on the hot path and exported at scrape time.

::

    flowctl_quota_requests_total{rule,outcome}   outcome: see OUTCOMES
    flowctl_quota_store_seconds                  histogram: one store call (a debit or a heartbeat)
    flowctl_quota_store_errors_total             store calls that failed or timed out
    flowctl_quota_mode{mode}                     1 for the mode in force: store | local | open | closed
    flowctl_quota_mode_changes_total             changes of mode (each also logged once)
    flowctl_quota_replicas                       replicas the local mode divides quotas by
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from flowctl.metrics import DurationHistogram

__all__ = ["MODES", "OUTCOMES", "STORE_BUCKETS_S", "QuotaCollector", "QuotaCounts", "QuotaState"]

#: ``admitted`` / ``rejected``: the store's answer; ``rejected_cached``: refused without a store call (the
#: key was known to be over until its retry time); ``bypassed``: the request's priority class skips the
#: rule; ``local_*``: decided by this replica's share (mode local); ``open_admitted``: admitted unchecked
#: (mode open); ``closed_rejected``: answered 503 (mode closed).
OUTCOMES = (
    "admitted", "rejected", "rejected_cached", "bypassed",
    "local_admitted", "local_rejected", "open_admitted", "closed_rejected",
)  # fmt: skip
MODES = ("store", "local", "open", "closed")
STORE_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1,
)  # fmt: skip


class QuotaCounts:
    """The counters one ``Quotas`` keeps: ``requests[rule][OUTCOMES.index(outcome)]`` and the rest."""

    __slots__ = ("requests", "store_seconds", "store_errors_total", "mode_changes_total")

    def __init__(self, rules: Sequence[str], buckets: Sequence[float] = STORE_BUCKETS_S) -> None:
        self.requests: dict[str, list[int]] = {r: [0] * len(OUTCOMES) for r in rules}
        self.store_seconds = DurationHistogram(buckets)
        self.store_errors_total = 0
        self.mode_changes_total = 0

    def total(self, outcome: str) -> int:
        """``outcome`` summed over rules."""
        i = OUTCOMES.index(outcome)
        return sum(c[i] for c in self.requests.values())


class QuotaState(Protocol):
    """What the collector reads (``flowctl.quota.Quotas``)."""

    @property
    def counts(self) -> QuotaCounts: ...
    @property
    def mode(self) -> str: ...
    @property
    def replicas(self) -> int: ...


class QuotaCollector:
    """A prometheus_client collector over one ``Quotas`` (register it on your registry)."""

    def __init__(self, quotas: QuotaState) -> None:
        self._quotas = quotas

    def describe(self) -> Iterable[Metric]:
        return self._families(live=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(live=True)

    def _families(self, *, live: bool) -> list[Metric]:
        requests = CounterMetricFamily(
            "flowctl_quota_requests", "Requests checked against a quota rule, by outcome.", labels=["rule", "outcome"]
        )
        seconds = HistogramMetricFamily("flowctl_quota_store_seconds", "Time of one quota store call (round trip).")
        errors = CounterMetricFamily("flowctl_quota_store_errors", "Quota store calls that failed or timed out.")
        mode = GaugeMetricFamily("flowctl_quota_mode", "1 for the quota mode in force (store, or the failure mode).",
                                 labels=["mode"])  # fmt: skip
        changes = CounterMetricFamily("flowctl_quota_mode_changes", "Changes of quota mode (each is logged).")
        replicas = GaugeMetricFamily("flowctl_quota_replicas", "Replicas the local failure mode divides quotas by.")
        if live:
            q = self._quotas
            c = q.counts
            for rule, counts in sorted(c.requests.items()):
                for outcome, n in zip(OUTCOMES, counts):
                    requests.add_metric([rule, outcome], n)
            h = c.store_seconds
            total, cumulative = 0, []
            for le, n in zip([repr(float(b)) for b in h.bounds] + ["+Inf"], h.counts):
                total += n
                cumulative.append((le, float(total)))
            seconds.add_metric([], cumulative, h.sum_s)
            errors.add_metric([], c.store_errors_total)
            for m in MODES:
                mode.add_metric([m], 1.0 if q.mode == m else 0.0)
            changes.add_metric([], c.mode_changes_total)
            replicas.add_metric([], q.replicas)
        return [requests, seconds, errors, mode, changes, replicas]
