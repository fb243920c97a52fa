"""GCRA, the generic cell rate algorithm: the contract both stores keep, and the in-process one.

Per key one stored value, the theoretical arrival time TAT. With emission
interval T (period / count) and burst tolerance tau (T x burst), a request of
cost c at time t computes ``new_tat = max(TAT, t) + c*T``; it passes iff
``new_tat - t <= tau + T`` (then TAT becomes new_tat), else it may retry after
``new_tat - t - tau - T``. One value per key, no window edge: in any window of
length w at most ``w/T + burst`` unit requests pass.

A debit names one or more keys (one per matching rule) and is all or nothing:
every key passes and is charged, or none is charged and the first key over
its quota is reported. ``flowctl.quota.store`` runs the same contract in
Redis (a Lua script, the server's clock); ``LocalGcra`` here runs it in
process (the local failure mode, and the reference the script is tested
against).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Debit", "LocalGcra", "Verdict"]


@dataclass(frozen=True, slots=True)
class Debit:
    """One key to charge: its stored name, T and tau in microseconds, and the cost in units."""

    key: str
    interval_us: float
    tolerance_us: float
    cost: float = 1.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A debit's answer.

    ``blocking``: index (in the debits) of the first key over its quota, -1 when allowed.
    ``retry_after_s``: when that key could take this cost (0 when allowed).
    ``remaining``: unit requests that could still pass now (the tightest key).
    ``reset_s``: until the (blocking, else every) key is back to a full burst.
    """

    allowed: bool
    blocking: int = -1
    retry_after_s: float = 0.0
    remaining: int = 0
    reset_s: float = 0.0


class LocalGcra:
    """GCRA over an in-process dict of TATs (microseconds on the caller's clock).

    Keys whose TAT has passed are forgotten when the dict reaches ``max_keys``
    (a forgotten key and an expired one behave the same).
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys

    def __len__(self) -> int:
        return len(self._tat)

    def clear(self) -> None:
        self._tat.clear()

    def debit(self, debits: Sequence[Debit], now_us: float) -> Verdict:
        """Charge every key or none (see the module docstring)."""
        tats = self._tat
        new: list[float] = []
        remaining: float = math.inf
        reset_us = 0.0
        for i, d in enumerate(debits):
            t_us, tau_us = d.interval_us, d.tolerance_us
            tat = max(tats.get(d.key, now_us), now_us)
            new_tat = tat + d.cost * t_us
            ahead = new_tat - now_us
            if ahead > tau_us + t_us:
                return Verdict(
                    False, i, (ahead - tau_us - t_us) / 1e6, math.floor((tau_us + t_us - (tat - now_us)) / t_us), (tat - now_us) / 1e6
                )
            new.append(new_tat)
            remaining = min(remaining, math.floor((tau_us + t_us - ahead) / t_us))
            reset_us = max(reset_us, ahead)
        if len(tats) >= self._max_keys:
            for k in [k for k, v in tats.items() if v <= now_us]:
                del tats[k]
            if len(tats) >= self._max_keys:
                tats.clear()
        for d, new_tat in zip(debits, new):
            tats[d.key] = new_tat
        return Verdict(True, -1, 0.0, 0 if remaining == math.inf else int(remaining), reset_us / 1e6)
