"""``common.measure_capacity``'s search, driven by a fake load generator (no service, no clock)."""

from __future__ import annotations

import asyncio

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from bench.scenarios import common as c

UNLOADED_P99_MS = 10.0  # the bound is 3x: 30 ms


def fake_drive(p99_at: Callable[[float, int], float], calls: list[tuple[float, float]]) -> Callable[..., Any]:
    """A ``drive`` whose p99 is ``p99_at(rate, nth probe at that rate)``; records (rate, seconds)."""
    seen: dict[float, int] = {}

    async def drive(run: Any, path: str, rate: float, seconds: float, **kw: Any) -> tuple[dict[str, Any], list[Any]]:
        calls.append((rate, seconds))
        nth = seen.get(rate, 0)
        seen[rate] = nth + 1
        p99 = UNLOADED_P99_MS if len(calls) == 1 else p99_at(rate, nth)
        sent = int(rate * seconds)
        return {"admitted_p99_ms": p99, "admitted_p50_ms": p99 / 2, "ok": sent, "sent": sent, "timeouts": 0,
                "ok_rps": rate}, []  # fmt: skip

    return drive


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def sleep(_s: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", sleep)  # the pause between probes
    monkeypatch.setattr(c, "log", lambda _msg: None)
    yield


async def search(monkeypatch: pytest.MonkeyPatch, p99_at: Callable[[float, int], float], **kw: Any) -> tuple[c.Capacity, list[tuple[float, float]]]:
    calls: list[tuple[float, float]] = []
    monkeypatch.setattr(c, "drive", fake_drive(p99_at, calls))
    cap = await c.measure_capacity(cast(c.Running, None), "/", cpus=0.5, work_ms=5.0, handler="blocking", probe_s=1.5, unloaded_s=3.0,
                                   max_probes=5, unloaded_rps=20.0, **kw)  # fmt: skip
    return cap, calls


async def test_a_clean_knee_is_found_to_within_eight_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    cap, _ = await search(monkeypatch, lambda rate, nth: 20.0 if rate <= 60.0 else 200.0)
    assert 60.0 / 1.08 <= cap.capacity_rps <= 60.0


async def test_probes_last_long_enough_for_the_requests_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _, calls = await search(monkeypatch, lambda rate, nth: 20.0 if rate <= 60.0 else 200.0, min_probe_requests=200)
    probes = calls[1:]
    assert probes and all(rate * seconds >= 200 - 1e-6 and seconds >= 1.5 for rate, seconds in probes)
    _, calls = await search(monkeypatch, lambda rate, nth: 20.0 if rate <= 60.0 else 200.0)
    assert all(seconds == 1.5 for _, seconds in calls[1:])


async def test_an_unconfirmed_pass_bisects_below_it_not_back_to_the_pass_before(monkeypatch: pytest.MonkeyPatch) -> None:
    # The true knee is at 70 rps; the first probe at the top rate that passes (lucky) fails when confirmed.
    # The old search fell back to the pass before it (1.4x lower); this one bisects between them.
    lucky: set[float] = set()

    def p99(rate: float, nth: int) -> float:
        if rate <= 70.0:
            return 20.0
        if rate < 80.0 and not lucky:
            lucky.add(rate)
            return 20.0  # one lucky pass over the knee
        return 200.0

    cap, calls = await search(monkeypatch, p99)
    assert 70.0 / 1.08 <= cap.capacity_rps <= 70.0, calls
