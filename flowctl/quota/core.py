"""``Quotas``: per-key rate limits shared by every replica, with an explicit failure mode.

Per request, after the adaptive limiter has admitted it:

1. ``match(header, path, priority)`` (no I/O): the rules that count this
   request and its key under each; a rule whose ``bypass`` names the
   request's priority class skips it. No match: nothing else runs.
2. ``await debit(matched)``: None (admitted and charged) or a
   ``QuotaRejection``.

   - A key refused by the store is remembered until its retry time: until
     then it is refused again without a store call (a tenant over its quota
     costs no round trip).
   - Otherwise one store call (``flowctl.quota.store``: GCRA in one Lua
     script) charges every matched key or none.
   - The store fails or does not answer within its timeout: this request is
     decided by the failure mode (``flowctl.quota.fallback``). After
     ``breaker_failures`` failures in a row the circuit breaker opens: the
     mode becomes the failure mode (one log line, ``flowctl_quota_mode``) and
     no call is made until a probe (a request, or the heartbeat) succeeds,
     which brings the mode back to ``store`` (one log line).

With no store, every decision is local (mode ``local``, quota / replicas).
``start()`` / ``stop()`` run the heartbeat (the replica count for mode local,
and the probe of a store that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence

from flowctl.errors import ConfigError, QuotaStoreError
from flowctl.quota.answers import QuotaRejection
from flowctl.quota.breaker import CircuitBreaker
from flowctl.quota.fallback import Fallback
from flowctl.quota.gcra import Debit
from flowctl.quota.metrics import OUTCOMES, QuotaCounts
from flowctl.quota.rules import QuotaRule, parse_rules
from flowctl.quota.store import KEY_PREFIX, QuotaStore

__all__ = ["Matched", "Quotas"]

log = logging.getLogger("flowctl.quota")

#: (rule, the request's key under it, the key's name in the store)
Matched = list[tuple[QuotaRule, str, str]]

_ADMITTED, _REJECTED, _CACHED, _BYPASSED, _LOCAL_ADMITTED, _LOCAL_REJECTED, _OPEN, _CLOSED = range(len(OUTCOMES))
_MAX_OVER = 10_000  # keys remembered as over their quota, at most


class Quotas:
    """Rules + store + failure mode (see the module docstring).

    ``rules``: rule texts or ``QuotaRule``s. ``store``: a ``QuotaStore`` (e.g.
    ``RedisStore``), started and closed by ``start``/``stop``; None: local
    only. ``on_error``: ``local`` | ``open`` | ``closed``. ``replicas``: what
    mode local divides by (None: counted from heartbeats while the store
    answered, 1 before any). ``heartbeat_s``: the heartbeat period (the
    replica TTL is three periods). ``clock``: seconds, monotonic.
    """

    def __init__(
        self,
        rules: Iterable[str | QuotaRule],
        *,
        store: QuotaStore | None = None,
        on_error: str = "local",
        replicas: int | None = None,
        heartbeat_s: float = 1.0,
        breaker_failures: int = 3,
        breaker_open_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        replica_id: str | None = None,
    ) -> None:
        self.rules: tuple[QuotaRule, ...] = parse_rules(rules)
        if not self.rules:
            raise ConfigError("quotas: no rules given")
        if replicas is not None and not (isinstance(replicas, int) and replicas >= 1):
            raise ConfigError(f"quota replicas must be an integer >= 1 or None (counted), got {replicas!r}")
        if not (heartbeat_s > 0):
            raise ConfigError(f"quota heartbeat_s must be > 0, got {heartbeat_s!r}")
        self.store = store
        self._fallback = Fallback(on_error)
        self.on_error = on_error
        self.replicas_given = replicas
        self.replicas_seen: int | None = None
        self.heartbeat_s = float(heartbeat_s)
        self.breaker = CircuitBreaker(failures=breaker_failures, open_s=breaker_open_s)
        self._clock = clock
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._counts = QuotaCounts([r.name for r in self.rules])
        self._requests = self._counts.requests
        self._mode = "store" if store is not None else "local"
        self._over: dict[str, float] = {}  # store key -> clock time until which it is over its quota
        self._debits = {r.name: (r.interval_s * 1e6, r.tolerance_s * 1e6, r.cost) for r in self.rules}
        self._heartbeat: asyncio.Task[None] | None = None
        self._started = False

    # -- state ----------------------------------------------------------------------------------

    @property
    def counts(self) -> QuotaCounts:
        return self._counts

    @property
    def mode(self) -> str:
        """``store`` while the store answers; else the failure mode (``local`` | ``open`` | ``closed``)."""
        return self._mode

    @property
    def replicas(self) -> int:
        """What mode local divides each quota by."""
        return self.replicas_given or self.replicas_seen or 1

    def check_priorities(self, classes: Sequence[str]) -> None:
        """``ConfigError`` when a rule's ``bypass`` names a class the limiter does not have."""
        for rule in self.rules:
            unknown = sorted(rule.bypass - set(classes))
            if unknown:
                raise ConfigError(f"quota rule {rule.name!r}: bypass names {unknown}, not priority classes {tuple(classes)}")

    def _set_mode(self, mode: str, why: str) -> None:
        if mode == self._mode:
            return
        log.warning("quota mode %s -> %s: %s", self._mode, mode, why)
        self._mode = mode
        self._counts.mode_changes_total += 1
        if mode == "store":
            self._fallback.reset()

    # -- per request ----------------------------------------------------------------------------

    def match(self, header: Callable[[str], str | None], path: str, priority: str | None = None) -> Matched:
        """The rules that count this request, with its key under each (``header(name)``: a header's
        value, ``name`` in lower case). Empty: no quota applies."""
        out: Matched = []
        for rule in self.rules:
            if rule.bypass and priority in rule.bypass:
                self._requests[rule.name][_BYPASSED] += 1
                continue
            key = rule.key_of(header, path)
            if key is not None:
                out.append((rule, key, KEY_PREFIX + rule.name + ":" + key))
        return out

    async def debit(self, matched: Matched) -> QuotaRejection | None:
        """Charge the matched keys: None when admitted, else the rejection to answer with."""
        now = self._clock()
        over = self._over
        if over:
            for rule, key, store_key in matched:
                until = over.get(store_key)
                if until is not None:
                    if until > now:
                        self._requests[rule.name][_CACHED] += 1
                        return QuotaRejection(429, "quota", until - now, rule, key)
                    del over[store_key]
        store = self.store
        if store is not None and self.breaker.allow(now):
            debits = [Debit(store_key, *self._debits[rule.name]) for rule, _, store_key in matched]
            try:
                verdict = await store.debit(debits)
            except QuotaStoreError as e:
                self._failed(e)
            else:
                done = self._clock()
                self._counts.store_seconds.observe(done - now)
                self._answered()
                if verdict.allowed:
                    for rule, _, _ in matched:
                        self._requests[rule.name][_ADMITTED] += 1
                    return None
                rule, key, store_key = matched[verdict.blocking]
                self._requests[rule.name][_REJECTED] += 1
                if len(over) >= _MAX_OVER:
                    self._forget_over(done)
                over[store_key] = done + verdict.retry_after_s
                return QuotaRejection(429, "quota", verdict.retry_after_s, rule, key, verdict.remaining)
        return self._decide_locally(matched, now)

    def _decide_locally(self, matched: Matched, now: float) -> QuotaRejection | None:
        mode = self._fallback.on_error if self.store is not None else "local"
        if mode == "open":
            for rule, _, _ in matched:
                self._requests[rule.name][_OPEN] += 1
            return None
        if mode == "closed":
            for rule, _, _ in matched:
                self._requests[rule.name][_CLOSED] += 1
            return QuotaRejection(503, "quota_store", max(1.0, self.breaker.open_for_s(now)))
        rules = [m[0] for m in matched]
        verdict = self._fallback.local(rules, [m[2] for m in matched], self.replicas, now * 1e6)
        if verdict.allowed:
            for rule in rules:
                self._requests[rule.name][_LOCAL_ADMITTED] += 1
            return None
        rule, key, _ = matched[verdict.blocking]
        self._requests[rule.name][_LOCAL_REJECTED] += 1
        return QuotaRejection(429, "quota", verdict.retry_after_s, rule, key, verdict.remaining)

    def _failed(self, error: BaseException) -> None:
        self._counts.store_errors_total += 1
        if self.breaker.failure(self._clock()) or (self._mode == "store" and not self.breaker.closed):
            self._set_mode(self._fallback.on_error, f"store failing ({error})")

    def _answered(self) -> None:
        if self.breaker.success() or self._mode != "store":
            self._set_mode("store", "store answers again")

    def _forget_over(self, now: float) -> None:
        over = self._over
        for k in [k for k, until in over.items() if until <= now]:
            del over[k]
        if len(over) >= _MAX_OVER:
            over.clear()

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the store and the heartbeat (the store may be down: the mode says so)."""
        if self._started:
            return
        self._started = True
        if self.store is not None:
            await self.store.start()
            await self.beat(first=True)
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="flowctl-quota-heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeat, leave the replica count, close the store."""
        if not self._started:
            return
        self._started = False
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.store is not None:
            with contextlib.suppress(QuotaStoreError):
                await self.store.heartbeat(self.replica_id, 3 * self.heartbeat_s, leave=True)
            await self.store.close()

    async def beat(self, *, first: bool = False) -> None:
        """One heartbeat: count the replicas; it is also the probe of a store that is down."""
        assert self.store is not None
        t0 = self._clock()
        try:
            n = await self.store.heartbeat(self.replica_id, 3 * self.heartbeat_s)
        except QuotaStoreError as e:
            if first:  # down at start-up: the failure mode from the first request on
                self.breaker.trip(self._clock())
            self._failed(e)
            return
        self._counts.store_seconds.observe(self._clock() - t0)
        self.replicas_seen = max(1, n)
        self._answered()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.beat()

    async def __aenter__(self) -> Quotas:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
