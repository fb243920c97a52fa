"""flowctl.http: the shed response's bytes are those of the JSON of its parts, whatever the reason."""

from __future__ import annotations

import math

from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import flowctl.aiohttp as fa
from flowctl.http import rejection_bytes, rejection_parts
from flowctl.limiter.decisions import Rejection, new_reason


def _rejection(trigger: str, stage: str, retry_after_s: float) -> Rejection:
    return Rejection(new_reason({"trigger": trigger, "stage": stage, "signal_name": "container", "signal_value": 0.9,
                                 "threshold": 0.8, "inflight": 3, "max_inflight": 4.0, "priority": "default",
                                 "resource": "r", "cool_off": True, "retry_after_s": retry_after_s, "dry_run": False,
                                 "priority_limit": 4.0}))


def _as_json_response(decision: Rejection, status: int, reason_header: str | None) -> web.Response:
    """The shed response as it was built before rejection_bytes: json_response of rejection_parts."""
    headers, body = rejection_parts(decision, reason_header=reason_header)
    return web.json_response(body, status=status, headers=headers)


_triggers = st.one_of(st.sampled_from(["queue", "cpu", "cool_off", "cpu_period", "limit", "loop_lag"]), st.text(max_size=12))
_retries = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 0.1, 1.0, 0.0004999, 1e16]))


@given(trigger=_triggers, stage=st.sampled_from(["ceiling", "limit", "period", "lag"]), retry_after_s=_retries,
       status=st.sampled_from([503, 429]), reason_header=st.sampled_from([None, "X-Flowctl-Reason"]))  # fmt: skip
def test_the_shed_response_is_the_json_response_of_its_parts(trigger: str, stage: str, retry_after_s: float, status: int,
                                                             reason_header: str | None) -> None:  # fmt: skip
    decision = _rejection(trigger, stage, retry_after_s)
    got = fa.rejection_response(decision, status=status, reason_header=reason_header)
    want = _as_json_response(decision, status, reason_header)
    assert got.status == want.status
    assert got.body == want.body
    assert list(got.headers.items()) == list(want.headers.items())


def test_rejection_bytes_twice_with_a_new_retry_after() -> None:
    """The (reason, stage) head is kept; the retry_after_s after it is each decision's own."""
    first = rejection_bytes(_rejection("cpu_period", "period", 1.0))[1]
    second = rejection_bytes(_rejection("cpu_period", "period", 2.3456))[1]
    assert first.endswith(b'"retry_after_s": 1.0}')
    assert second.endswith(b'"retry_after_s": 2.346}')
    assert math.isclose(float(second.rsplit(b" ", 1)[1][:-1]), 2.346)
