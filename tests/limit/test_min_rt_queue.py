"""Min RT is a service time, not a queue (RollingWindow.servers, Bbr.set_servers): samples completed
with more requests in flight than the service runs at once are left out of it."""

from __future__ import annotations

import pytest

from flowctl.limit.bbr import Bbr
from flowctl.limit.window import RollingWindow


def feed(w: RollingWindow, start: float, seconds: float, rt_s: float, inflight: int, rate: float = 100.0) -> float:
    """``rate`` samples a second of ``rt_s`` completed with ``inflight`` in flight; returns the end time."""
    n = int(seconds * rate)
    for i in range(n):
        w.add_sample(start + i / rate, rt_s, inflight, False)
    return start + seconds


def test_queued_samples_do_not_set_min_rt() -> None:
    w = RollingWindow(10.0, 100)
    w.servers = 1
    t = feed(w, 0.0, 2.0, 0.007, 1)  # alone: the service time
    t = feed(w, t, 2.0, 0.003, 4)  # faster-looking but queued (a mean of a mix): ignored too
    assert w.stats(t).min_rt_s == pytest.approx(0.007)


def test_a_long_overload_keeps_the_last_unqueued_min_rt() -> None:
    """20 s of queueing (twice the window) admit no unqueued sample: min RT stays the service time."""
    w = RollingWindow(10.0, 100)
    w.servers = 1
    t = feed(w, 0.0, 2.0, 0.007, 1)
    t = feed(w, t, 20.0, 0.073, 12)
    st = w.stats(t)
    assert st.min_rt_s == pytest.approx(0.007) and st.max_pass > 0


def test_without_unqueued_samples_all_samples_count() -> None:
    """A service always busier than its servers (I/O-bound, many in flight) still learns a min RT."""
    w = RollingWindow(10.0, 100)
    w.servers = 1
    t = feed(w, 0.0, 2.0, 0.100, 50)
    assert w.stats(t).min_rt_s == pytest.approx(0.100)


def test_a_slower_service_raises_the_unqueued_min_rt() -> None:
    w = RollingWindow(10.0, 100)
    w.servers = 2
    t = feed(w, 0.0, 2.0, 0.005, 2)
    t = feed(w, t, 12.0, 0.020, 1)  # the old buckets left the window: the new service time holds
    assert w.stats(t).min_rt_s == pytest.approx(0.020)


def test_reset_forgets_the_last_unqueued_min_rt() -> None:
    w = RollingWindow(10.0, 100)
    w.servers = 1
    t = feed(w, 0.0, 1.0, 0.007, 1)
    w.stats(t)
    w.reset()
    t = feed(w, t, 1.0, 0.050, 5)
    assert w.stats(t).min_rt_s == pytest.approx(0.050)


def test_bbr_at_4x_keeps_min_rt_within_2x_of_the_service_time() -> None:
    """The issue's sidecar case: 7 ms service time, then 4x overload with 10-12 in flight at 73 ms."""
    bbr = Bbr()
    bbr.set_servers(1)
    t = 0.0
    for i in range(300):  # 3 s at 100/s, alone
        t = i / 100
        bbr.on_sample(t, 0.007, 1, False)
    for i in range(3000):  # 15 s of queueing at 200/s
        t = 3.0 + i / 200
        bbr.on_sample(t, 0.073, 11, False)
    st = bbr.stats(t + 0.2)
    assert st.min_rt_s is not None and st.min_rt_s <= 2 * 0.007
    assert st.max_inflight <= 3  # 200/s x 7 ms = 1.4: the limit of a service, not of its queue
