"""Live: an app gated on the lxcfs view keeps a CPU limit and utilization while a real lxcfs is
killed (-9) and restarted under load, and returns to the lxcfs view when it is back."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

import flowctl.aiohttp as flowctl_aiohttp
from tests.realenv import need_binary, need_root

pytestmark = [pytest.mark.real, pytest.mark.slow]


def _mounted(directory: Path) -> bool:
    return f" {directory} " in Path("/proc/self/mountinfo").read_text()


async def _start_lxcfs(exe: str, directory: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([exe, "-f", "--enable-cfs", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (_mounted(directory) and (directory / "proc/stat").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc, directory)
            pytest.fail(f"lxcfs did not mount {directory} (status {proc.returncode})")
        await asyncio.sleep(0.02)
    return proc


def _unmount(directory: Path) -> None:
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount:
        subprocess.run([fusermount, "-u", str(directory)], capture_output=True, check=False)
    if _mounted(directory):
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def _stop(proc: subprocess.Popen[bytes], directory: Path) -> None:
    _unmount(directory)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=10)


def _scrape(text: str) -> dict[str, object]:
    out: dict[str, object] = {"active": None, "limit": None, "utilization": None}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "flowctl_signal_view" and s.labels.get("configured") == "lxcfs":
                out["active"] = s.labels["active"]
            elif s.name == "flowctl_cpu_limit_cores":
                out["limit"] = s.value
            elif s.name == "flowctl_cpu_utilization_smoothed_ratio" and s.labels.get("view") == "lxcfs":
                out["utilization"] = s.value
    return out


async def test_lxcfs_killed_and_restarted_under_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    need_root()
    exe = need_binary("lxcfs")
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing")
    mnt = tmp_path / "lxcfs"
    mnt.mkdir()
    monkeypatch.setenv("FLOWCTL_LXCFS_DIR", str(mnt))
    caplog.set_level(logging.WARNING, logger="flowctl.cpu.sampler")
    procs = [await _start_lxcfs(exe, mnt)]
    runner: web.AppRunner | None = None
    try:
        async def hello(request: web.Request) -> web.Response:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.001:  # 1 ms of CPU: the views have something to see
                pass
            return web.Response(text="hello")

        app = web.Application()
        app.router.add_get("/", hello)
        flowctl_aiohttp.setup(app, view="lxcfs", limiter_options={"dry_run": True})
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        statuses: Counter[int] = Counter()
        scrapes: list[dict[str, object]] = []
        stop = asyncio.Event()

        async def load(s: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                async with s.get(base + "/") as r:
                    await r.read()
                    statuses[r.status] += 1

        async def wait_for_view(s: aiohttp.ClientSession, view: str, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while True:
                async with s.get(base + "/metrics") as r:
                    scrape = _scrape(await r.text())
                scrapes.append(scrape)
                if scrape["active"] == view and scrape["utilization"] is not None:
                    return
                assert time.monotonic() < deadline, f"not on {view} after {timeout_s} s: {scrapes[-3:]}"
                await asyncio.sleep(0.05)

        async with aiohttp.ClientSession() as s:
            loaders = [asyncio.create_task(load(s)) for _ in range(4)]
            await wait_for_view(s, "lxcfs", 10)
            lxcfs_limit = scrapes[-1]["limit"]
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            await wait_for_view(s, "container", 10)
            _unmount(mnt)  # what a restarted lxcfs DaemonSet does with the dead mount first
            procs.append(await _start_lxcfs(exe, mnt))
            await wait_for_view(s, "lxcfs", 10)
            stop.set()
            await asyncio.gather(*loaders)

        first = next(i for i, x in enumerate(scrapes) if x["active"] == "lxcfs" and x["utilization"] is not None)
        known = scrapes[first:]
        print(f"\nlxcfs kill/restart: {len(known)} scrapes, views {Counter(str(x['active']) for x in known)}, "
              f"requests {dict(statuses)}")
        assert all(x["limit"] is not None and x["utilization"] is not None for x in known), known
        assert scrapes[-1]["limit"] == lxcfs_limit
        assert set(statuses) == {200} and statuses[200] > 50, statuses
        msgs = [r.getMessage() for r in caplog.records if r.name == "flowctl.cpu.sampler"]
        assert len(msgs) == 2 and "falling back to container" in msgs[0] and "works again" in msgs[1], msgs
    finally:
        if runner is not None:
            await runner.cleanup()
        for p in procs:
            _stop(p, mnt)
        assert not _mounted(mnt)
