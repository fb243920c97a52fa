"""What a request over its quota is told: status, headers and JSON body, framework-neutral.

- over a quota: **429**, ``Retry-After`` (whole seconds, at least 1), the IETF
  httpapi draft's ``RateLimit-Policy: "<rule>";q=<count>;w=<period s>`` and
  ``RateLimit: "<rule>";r=<remaining>;t=<seconds>``, and the body
  ``{"error": "quota", "rule": ..., "key": ..., "retry_after_s": ...}``;
- the store cannot answer in mode ``closed``: **503**, ``Retry-After``, and
  ``{"error": "unavailable", "reason": "quota_store", "retry_after_s": ...}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flowctl.quota.rules import QuotaRule

__all__ = ["QuotaRejection", "quota_parts"]


@dataclass(frozen=True, slots=True)
class QuotaRejection:
    """A request refused by a quota (429, reason ``quota``) or by a store that cannot answer in
    mode closed (503, reason ``quota_store``)."""

    status: int
    reason: str
    retry_after_s: float
    rule: QuotaRule | None = None
    key: str | None = None
    remaining: int = 0


def quota_parts(rejection: QuotaRejection) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, JSON body) of the answer to ``rejection`` (see the module docstring)."""
    retry_after_s = rejection.retry_after_s
    if not (math.isfinite(retry_after_s) and retry_after_s >= 0):
        retry_after_s = 1.0
    seconds = max(1, math.ceil(retry_after_s))
    headers = {"Retry-After": str(seconds)}
    rule = rejection.rule
    if rejection.reason != "quota" or rule is None:
        return rejection.status, headers, {"error": "unavailable", "reason": rejection.reason, "retry_after_s": round(retry_after_s, 3)}
    headers["RateLimit-Policy"] = f'"{rule.name}";q={rule.count};w={rule.period_s}'
    headers["RateLimit"] = f'"{rule.name}";r={max(0, rejection.remaining)};t={seconds}'
    body = {"error": "quota", "rule": rule.name, "key": rejection.key, "retry_after_s": round(retry_after_s, 3)}
    return rejection.status, headers, body
