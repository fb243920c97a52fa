"""Usable cores (flowctl.cpu.parallelism): fake /proc/PID/stat series and a fixture cgroup tree.

A Python process at 1 core in a 1.5-CPU quota reads utilization about 1.0; a native
multi-threaded process at 1.4 cores reads 0.93; two Python workers can use 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowctl.cpu.parallelism import MAX_PROCESSES, Parallelism, gil_enabled
from flowctl.cpu.sampler import Sampler
from flowctl.cpu.sources import ContainerSource
from tests.cpu import v2_tree

TCK = os.sysconf("SC_CLK_TCK")
SELF_PID = 1  # this "process" in the tree: never one of the fake pids below
WATCHED = 4242


def write_proc(root: Path, pid: int, cpu_s: float, *, threads: int = 1, exe: str = "/usr/bin/python3.11") -> None:
    """``proc/PID/stat`` with ``cpu_s`` CPU seconds (utime) and ``threads``; ``proc/PID/exe`` -> ``exe``."""
    d = root / "proc" / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    ticks = round(cpu_s * TCK)
    # fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime priority nice num_threads ...
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(ticks), "0", "0", "0", "20", "0",
            str(threads), "0", "1000"]  # fmt: skip
    (d / "stat").write_text(f"{pid} (some (odd) name) {' '.join(rest)}\n")
    if not (d / "exe").is_symlink():
        os.symlink(exe, d / "exe")


def run_series(root: Path, par: Parallelism, series: dict[int, list[float]], threads: int = 1) -> None:
    """Observe each pid's CPU-seconds series (Python processes), one second apart."""
    steps = len(next(iter(series.values())))
    for i in range(steps):
        for pid, cpu in series.items():
            write_proc(root, pid, cpu[i], threads=threads)
        par.observe(list(series), float(i))


def test_one_python_process_counts_one_core(tmp_path: Path) -> None:
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    run_series(tmp_path, par, {100: [0.0, 1.0, 2.0, 3.0]}, threads=4)  # python, 4 threads, 1 core busy
    assert par.usable.cores == 1.0
    assert par.usable.why == "one Python process"


def test_a_native_multithreaded_process_is_unbounded(tmp_path: Path) -> None:
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    write_proc(tmp_path, 100, 0.0, threads=8, exe="/usr/sbin/nginx")
    par.observe([100], 0.0)
    assert par.usable.cores is None and "8 native threads" in par.usable.why  # before any rate
    write_proc(tmp_path, 100, 1.4, threads=8, exe="/usr/sbin/nginx")
    par.observe([100], 1.0)
    assert par.usable.cores is None and "seen above 1 core" in par.usable.why


def test_a_python_process_seen_above_one_core_is_unbounded(tmp_path: Path) -> None:
    """A free-threaded interpreter, or C extensions that release the GIL: measured, not assumed."""
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    run_series(tmp_path, par, {100: [0.0, 1.0, 2.3]}, threads=4)
    assert par.usable.cores is None and "seen above 1 core" in par.usable.why


def test_two_workers_count_two_and_an_idle_master_is_left_out(tmp_path: Path) -> None:
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    run_series(tmp_path, par, {10: [0.0, 0.01, 0.01], 11: [0.0, 0.9, 1.9], 12: [0.0, 0.8, 1.7]})
    assert par.usable.cores == 2.0
    assert par.usable.why == "2 processes, 2 Python" and par.usable.seen == 3


def test_an_idle_group_counts_its_most_parallel_process(tmp_path: Path) -> None:
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    run_series(tmp_path, par, {10: [0.0, 0.0], 11: [0.0, 0.01]})
    assert par.usable.cores == 1.0 and par.usable.processes == 1


def test_short_gaps_are_not_rated(tmp_path: Path) -> None:
    """CPU time ticks in 1/CLK_TCK s: two readings 0.1 s apart would see 1 tick as 0.1 core of noise."""
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    write_proc(tmp_path, 100, 0.0)
    par.observe([100], 0.0)
    write_proc(tmp_path, 100, 0.12)  # 1.2 "cores" over 0.1 s: too short to rate
    par.observe([100], 0.1)
    assert par.usable.cores == 1.0
    write_proc(tmp_path, 100, 1.0)
    par.observe([100], 1.0)
    assert par.usable.cores == 1.0


def test_this_process_is_one_core_while_the_gil_is_on(tmp_path: Path) -> None:
    write_proc(tmp_path, 500, 0.0, threads=3, exe="/opt/app/server")  # not named python: known from inside
    on = Parallelism(str(tmp_path), self_pid=500, gil=True)
    off = Parallelism(str(tmp_path), self_pid=500, gil=False)
    on.observe([500], 0.0)
    off.observe([500], 0.0)
    assert on.usable.cores == 1.0 and off.usable.cores is None
    assert isinstance(gil_enabled(), bool)


def test_too_many_or_unlisted_processes_are_unbounded(tmp_path: Path) -> None:
    par = Parallelism(str(tmp_path), self_pid=SELF_PID)
    assert par.observe(range(2, MAX_PROCESSES + 3), 0.0).cores is None
    assert par.observe(None, 1.0).cores is None
    assert par.observe([12345], 2.0).why == "no process in the group"  # gone before it was read


@pytest.mark.parametrize(
    ("procs", "usage_cores", "usable", "utilization"),
    [
        pytest.param({100: ("/usr/bin/python3", 1)}, 1.0, 1.0, 1.0, id="one-python-process"),
        pytest.param({100: ("/usr/sbin/native", 8)}, 1.4, 1.5, 1.4 / 1.5, id="native-multithreaded"),
        pytest.param({100: ("/usr/bin/python3", 1), 101: ("/usr/bin/python3", 1)}, 1.0, 1.5, 1.0 / 1.5,
                     id="two-workers-in-1.5"),
    ],
)  # fmt: skip
def test_utilization_is_measured_against_usable_cores(
    tmp_path: Path, procs: dict[int, tuple[str, int]], usage_cores: float, usable: float, utilization: float
) -> None:
    """A 1.5-CPU v2 group (fixture tree) whose processes burn ``usage_cores`` together."""
    v2_tree.switched_host(tmp_path)
    grp = v2_tree.group(tmp_path, "app", cpu_max="150000 100000", stat=v2_tree.cpu_stat(0.0, 0, 0, 0.0))
    (grp / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
    v2_tree.process(tmp_path, WATCHED, "/app")  # the process the view is asked about (as --watch pid:)
    clock = [0.0]
    src = ContainerSource(str(tmp_path), pid=WATCHED, clock=lambda: clock[0],
                          parallelism=Parallelism(str(tmp_path), self_pid=SELF_PID))  # fmt: skip
    sampler = Sampler(src, clock=lambda: clock[0], limits_interval_s=1.0)
    share = usage_cores / len(procs)
    for second in range(4):
        clock[0] = float(second)
        for pid, (exe, threads) in procs.items():
            write_proc(tmp_path, pid, share * second, threads=threads, exe=exe)
        (grp / "cpu.stat").write_text(v2_tree.cpu_stat(usage_cores * second, 0, 0, 0.0))
        r = sampler.sample()
    assert r.limit_cores == 1.5
    assert r.usable_cores == pytest.approx(usable)
    assert r.utilization == pytest.approx(utilization, rel=0.02)
