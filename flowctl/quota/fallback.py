"""The failure modes: how a replica decides while the quota store cannot answer.

- ``local``: this replica enforces its share, quota / replicas (the replicas
  configured, else the count last seen in the store's heartbeats, else 1),
  with the same GCRA in process; its burst is the rule's burst / replicas (at
  least the cost). Across n replicas behind an even balancer the sum stays
  near the quota.
- ``open``: admit.
- ``closed``: refuse with 503, reason ``quota_store``.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowctl.errors import ConfigError
from flowctl.quota.gcra import Debit, LocalGcra, Verdict
from flowctl.quota.rules import QuotaRule

__all__ = ["ON_ERROR", "Fallback"]

ON_ERROR = ("local", "open", "closed")


class Fallback:
    """The decision of ``on_error`` for one request's matched rules (see the module docstring)."""

    def __init__(self, on_error: str = "local") -> None:
        if on_error not in ON_ERROR:
            raise ConfigError(f"quota on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.on_error = on_error
        self._local = LocalGcra()
        self._scaled: dict[tuple[str, int], tuple[float, float]] = {}  # (rule, replicas) -> (T us, tau us)

    def reset(self) -> None:
        """Forget the local state (the store answers again; a later outage starts afresh)."""
        self._local.clear()

    def local(self, rules: Sequence[QuotaRule], keys: Sequence[str], replicas: int, now_us: float) -> Verdict:
        """This replica's share of every rule: charge ``keys`` (one per rule) locally."""
        n = max(1, replicas)
        debits = []
        for rule, key in zip(rules, keys):
            scaled = self._scaled.get((rule.name, n))
            if scaled is None:
                interval_us = rule.interval_s * 1e6 * n
                burst = max(rule.burst / n, rule.cost - 1.0)
                scaled = self._scaled[(rule.name, n)] = (interval_us, interval_us * burst)
                if len(self._scaled) > 4096:
                    self._scaled.clear()
            debits.append(Debit(key, scaled[0], scaled[1], rule.cost))
        return self._local.debit(debits, now_us)

