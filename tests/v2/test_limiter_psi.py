"""The limiter's pressure trigger fed by a real per-cgroup PSI (cpu.pressure of a throttled v2 group)."""

from __future__ import annotations

import asyncio

import pytest

from flowctl import FixedLimit, Limiter, Rejection, Token, make_signal
from flowctl.limiter import Policy
from tests.v2.helpers import burner_in, v2_group

pytestmark = [pytest.mark.real, pytest.mark.slow]


async def test_pressure_trigger_fires_on_the_groups_own_psi() -> None:
    with v2_group(cpu_max={"": "50000 100000"}) as leaf, burner_in(leaf) as p:
        sig = make_signal("container", pid=p.pid, interval_s=0.1)
        # CPU gate out of reach (threshold 100x, and no busy precondition): only the pressure trigger can make it hot.
        lim = Limiter(sig, FixedLimit(1), policy=Policy(cpu_threshold=100.0, busy_fraction=0.0, pressure_threshold=0.1, cool_off_s=0.0))
        async with sig:
            for _ in range(300):
                await asyncio.sleep(0.01)
                if sig.reading.pressure_ratio is not None:
                    break
            await asyncio.sleep(0.5)
            held = lim.acquire()
            assert isinstance(held, Token)
            d = lim.acquire()
            reading = sig.reading
            held.success()
    assert sig.limits is not None and sig.limits.details["pressure_scope"] == "cgroup"
    assert reading.pressure_ratio is not None and reading.pressure_ratio >= 0.1
    assert isinstance(d, Rejection), d
    assert (d.reason.trigger, d.reason.signal_name, d.reason.threshold) == ("pressure", "container", 0.1)
    assert d.reason.signal_value is not None and d.reason.signal_value >= 0.1
