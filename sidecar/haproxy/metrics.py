"""HAProxy's figures under flowctl names, read at scrape time from the control loop's last ``show stat``.

Why flowctl names rather than HAProxy's own Prometheus exporter: one scrape of
the admin listener carries everything, next to the limiter's series, and the figures are the ones the control loop
acted on, not a second reading taken at another moment. HAProxy's exporter
stays available to anyone who adds it to their own HAProxy; it is not exposed
here (the generated config has no stats or exporter listener).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sidecar.haproxy.control import Setting

__all__ = ["HaproxyCollector", "HaproxyState"]


class HaproxyState(Protocol):
    """What the collector reads of the engine (``sidecar.haproxy.engine.HaproxySidecar``)."""

    @property
    def up(self) -> bool: ...
    @property
    def restarts_total(self) -> int: ...
    @property
    def setting(self) -> Setting | None: ...
    @property
    def figures(self) -> dict[str, int]: ...
    @property
    def sheds_total(self) -> dict[str, int]: ...
    @property
    def control_errors_total(self) -> int: ...


class HaproxyCollector:
    """``flowctl_haproxy_*``: the child's state, what it was told, and what it did."""

    def __init__(self, engine: HaproxyState) -> None:
        self._engine = engine

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(live=True)

    def _families(self, live: bool = False) -> list[Metric]:
        up = GaugeMetricFamily("flowctl_haproxy_up", "1 while the HAProxy child runs and answers its admin socket.")
        restarts = CounterMetricFamily("flowctl_haproxy_restarts", "Times flowctl restarted a HAProxy child that died.")
        maxconn = GaugeMetricFamily("flowctl_haproxy_maxconn", "The upstream server's maxconn as last set: the admission "
                                    "limit (requests in service at once).")
        room = GaugeMetricFamily("flowctl_haproxy_room", "Per priority class, the requests in service plus queued at "
                                 "which a request of the class is shed (admission.map).", labels=["priority"])
        engaged = GaugeMetricFamily("flowctl_haproxy_engaged", "1 while the limits (not only the ceilings) apply.")
        capped = GaugeMetricFamily("flowctl_haproxy_capped", "0 in dry-run: maxconn and rooms are computed, not set.")
        current = GaugeMetricFamily("flowctl_haproxy_current_sessions", "Requests the upstream is serving now (HAProxy scur).")
        queue = GaugeMetricFamily("flowctl_haproxy_queue", "Requests waiting in HAProxy's queue now.")
        streams = GaugeMetricFamily("flowctl_haproxy_stream_sessions", "Streams (WebSocket, SSE, stream paths) open now: "
                                    "they hold no admission.")
        requests = CounterMetricFamily("flowctl_haproxy_requests", "HTTP requests HAProxy received.")
        shed = CounterMetricFamily("flowctl_haproxy_shed", "Requests HAProxy answered 503: reason room (the class's room "
                                   "was full; the 503 body names the limit or ceiling behind it) by priority, or "
                                   "queue_timeout (waited past --queue-timeout).", labels=["reason", "priority"])
        errors = CounterMetricFamily("flowctl_haproxy_control_errors", "Control ticks that failed (admin socket errors).")
        if live:
            e = self._engine
            up.add_metric([], 1.0 if e.up else 0.0)
            restarts.add_metric([], e.restarts_total)
            s = e.setting
            if s is not None:
                maxconn.add_metric([], s.maxconn)
                for p, n in s.rooms.items():
                    room.add_metric([p], n)
                engaged.add_metric([], 1.0 if s.engaged else 0.0)
                capped.add_metric([], 1.0 if s.capped else 0.0)
            f = e.figures
            current.add_metric([], f.get("current_sessions", 0))
            queue.add_metric([], f.get("queue", 0))
            streams.add_metric([], f.get("stream_sessions", 0))
            requests.add_metric([], f.get("requests_total", 0))
            for p, n in e.sheds_total.items():
                shed.add_metric(["room", p], n)
            shed.add_metric(["queue_timeout", ""], f.get("queue_timeouts_total", 0))
            errors.add_metric([], e.control_errors_total)
        return [up, restarts, maxconn, room, engaged, capped, current, queue, streams, requests, shed, errors]
