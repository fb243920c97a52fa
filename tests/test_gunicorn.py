"""flowctl.aiohttp under real gunicorn with 2 aiohttp workers and PROMETHEUS_MULTIPROC_DIR:
every scrape, whichever worker answers it, counts the same whole-app totals."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realenv import need

REPO = Path(__file__).resolve().parent.parent
REQUESTS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # a new connection each time: any worker may answer
        body: bytes = r.read()
        return body.decode()


def _total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m is None:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[str]:
    need(importlib.util.find_spec("gunicorn") is not None, "needs gunicorn (pip install -e '.[test]')")
    port = _free_port()
    metrics_dir = tmp_path / "prom"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "BIND": f"127.0.0.1:{port}", "WORKERS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn.py", "--log-level", "warning", "examples.gunicorn:app"],
        cwd=REPO,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"gunicorn exited with {proc.returncode}"
            try:
                _get(url + "/metrics")
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not come up in 30 s"
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_every_scrape_counts_the_same_totals_under_two_workers(gunicorn: str) -> None:
    pids = set()
    for _ in range(REQUESTS):
        body = _get(gunicorn + "/")  # admitted or shed (the machine's CPU may be hot): counted either way
        pids.update(re.findall(r"worker (\d+)", body))

    # Each worker publishes within about a second; then every scrape must agree on the totals.
    deadline = time.monotonic() + 15
    while _total(_get(gunicorn + "/metrics"), "flowctl_requests_total", resource="hello") != REQUESTS:
        assert time.monotonic() < deadline, "the totals never reached every scrape"
        time.sleep(0.2)
    scrapes = [_get(gunicorn + "/metrics") for _ in range(20)]
    totals = {_total(s, "flowctl_requests_total", resource="hello") for s in scrapes}
    assert totals == {REQUESTS}
    admitted = {_total(s, "flowctl_requests_total", resource="hello", outcome="admitted") for s in scrapes}
    assert len(admitted) == 1
    # The duration histogram of admitted requests is summed over workers too.
    counts = {_total(s, "flowctl_request_duration_seconds_count", resource="hello") for s in scrapes}
    assert counts == admitted
    # Two live workers: two per-worker limit series (pid label), in-flight summed to one series.
    worker_pids = {frozenset(re.findall(r'flowctl_max_inflight\{pid="(\d+)"\}', s)) for s in scrapes}
    assert len(worker_pids) == 1 and len(next(iter(worker_pids))) == 2
    assert all(re.search(r'^flowctl_inflight\{resource="hello"\} 0\.0$', s, re.M) for s in scrapes)
    assert len(pids) == 2, f"requests were served by {pids}, not by both workers"


@pytest.mark.slow
def test_sessions_are_summed_over_workers(gunicorn: str) -> None:
    """WebSockets held open in the workers: every scrape shows them in flowctl_sessions_active
    (summed over live workers) and none in flowctl_inflight; closed, their durations are summed."""
    import asyncio

    import aiohttp

    def scrape_until(cond: str, value: float) -> None:
        deadline = time.monotonic() + 15
        while _total(_get(gunicorn + "/metrics"), cond, resource="ws") != value:
            assert time.monotonic() < deadline, f"{cond} never reached {value}"
            time.sleep(0.2)

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            socks = [await session.ws_connect(gunicorn + "/ws") for _ in range(6)]
            try:
                await socks[0].send_str("hi")
                assert await socks[0].receive_str() == "hi"
                await asyncio.to_thread(scrape_until, "flowctl_sessions_active", 6)
                scrapes = [await asyncio.to_thread(_get, gunicorn + "/metrics") for _ in range(10)]
                assert {_total(s, "flowctl_sessions_active", resource="ws") for s in scrapes} == {6}
                assert {_total(s, "flowctl_inflight", resource="ws") for s in scrapes} == {0}
            finally:
                for ws in socks:
                    await ws.close()
        await asyncio.to_thread(scrape_until, "flowctl_session_duration_seconds_count", 6)

    asyncio.run(run())


def test_multiprocess_mode_needs_the_directory_before_prometheus_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process prometheus_client was imported without the variable: asking for multiprocess
    mode fails with a message that says why, rather than silently exporting one worker."""
    from aiohttp import web

    import flowctl.aiohttp as fa
    from flowctl.errors import ConfigError
    from flowctl.limiter import Limiter
    from flowctl.signal import StaticSignal

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    with pytest.raises(ConfigError, match="need PROMETHEUS_MULTIPROC_DIR"):
        fa.setup(web.Application(), limiter=Limiter(StaticSignal()), loop_lag=False, multiprocess=True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="set after prometheus_client was imported"):
        fa.setup(web.Application(), limiter=Limiter(StaticSignal()), loop_lag=False)  # None: follows the variable
