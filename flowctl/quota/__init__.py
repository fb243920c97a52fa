"""Quotas across replicas: per-key rate limits (GCRA) shared through Redis, with an explicit failure mode.

Modules, each with one job (dependencies point down this list):

- ``core``: ``Quotas``: match rules, remember keys over their quota, call the store, fall back.
- ``store``: the GCRA Lua script and ``RedisStore`` (``redis.asyncio``, one ``EVALSHA`` per debit).
- ``fallback``: the failure modes ``local`` (quota / replicas in process), ``open``, ``closed``.
- ``breaker``: ``CircuitBreaker``: no calls to a store that keeps failing, probes now and then.
- ``gcra``: the algorithm's contract (``Debit``, ``Verdict``) and ``LocalGcra``.
- ``rules``: ``QuotaRule`` and ``parse_rule`` (``key=header:X-Tenant,rate=100/s,burst=20``).
- ``answers``: ``QuotaRejection`` and the 429 / 503 answer (``RateLimit-Policy``, ``RateLimit``).
- ``metrics``: counters and ``QuotaCollector`` (``flowctl_quota_*``).

Integrations: ``flowctl.aiohttp.setup(app, quotas=[...], quota_store="redis://...")`` and the
sidecar's ``--quota`` / ``--quota-store``; see docs/quota.md.
"""

from __future__ import annotations

from flowctl.quota.answers import QuotaRejection, quota_parts
from flowctl.quota.breaker import CircuitBreaker
from flowctl.quota.core import Matched, Quotas
from flowctl.quota.fallback import ON_ERROR
from flowctl.quota.gcra import Debit, LocalGcra, Verdict
from flowctl.quota.metrics import MODES, OUTCOMES, QuotaCollector
from flowctl.quota.rules import QuotaRule, parse_rule, parse_rules
from flowctl.quota.store import GCRA_SCRIPT, KEY_PREFIX, QuotaStore, RedisStore, check_store_url

__all__ = [
    "CircuitBreaker",
    "Debit",
    "GCRA_SCRIPT",
    "KEY_PREFIX",
    "LocalGcra",
    "MODES",
    "Matched",
    "ON_ERROR",
    "OUTCOMES",
    "QuotaCollector",
    "QuotaRejection",
    "QuotaRule",
    "QuotaStore",
    "Quotas",
    "RedisStore",
    "Verdict",
    "check_store_url",
    "make_quotas",
    "parse_rule",
    "parse_rules",
    "quota_parts",
]


def make_quotas(
    rules: object,
    *,
    store_url: str | None = None,
    on_error: str = "local",
    replicas: int | None = None,
    timeout_s: float = 0.02,
) -> Quotas:
    """``Quotas`` over ``rules`` (texts or ``QuotaRule``s), on a ``RedisStore`` at ``store_url``
    (None or "": local only). Raises ``ConfigError`` for a bad rule, URL or option."""
    from collections.abc import Iterable

    from flowctl.errors import ConfigError

    if isinstance(rules, str) or not isinstance(rules, Iterable):
        raise ConfigError(f"quotas must be a list of rules, got {rules!r}")
    store = RedisStore(store_url, timeout_s=timeout_s) if store_url else None
    return Quotas(rules, store=store, on_error=on_error, replicas=replicas)
