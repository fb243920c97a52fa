"""bench.sidecar_overhead: wrk output parsing (the benchmark itself is run by hand, not by the suite)."""

from __future__ import annotations

from bench.sidecar_overhead import parse_wrk

WRK_OUT = """Running 10s test @ http://127.0.0.1:8000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.93ms    3.01ms  45.10ms   80.12%
    Req/Sec     4.45k   312.05     5.01k    71.00%
  Latency Distribution
     50%  750.00us
     75%   12.31ms
     90%   14.02ms
     99%    1.21s
  44465 requests in 10.01s, 7.17MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:   4443.39
Transfer/sec:    733.26KB
"""


def test_parse_wrk() -> None:
    r = parse_wrk(WRK_OUT)
    assert r.rps == 4443.39
    assert r.p50_ms == 0.75
    assert r.p99_ms == 1210.0
    assert r.errors == 8
    assert r.requests == 44465
